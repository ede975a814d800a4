"""What every benchmark script shares: the record header BENCHMARKS.md asks for, writing a
record, and timing a CUDA call. Scripts import it as `benchlib` (they run from bench/)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path


def record_header(device: str | None = None) -> dict:
    """device (default: this CPU), commit, command, date."""
    import torch

    cpu = f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    return {
        "device": device or cpu,
        # the GPU machine receives the working tree without this checkout's git state: the caller
        # commits first and passes the commit it sent as INGOT_COMMIT
        "commit": os.environ.get("INGOT_COMMIT")
        or subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def write_record(path: Path, record: dict) -> None:
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(json.dumps(record, indent=2, default=str))


def cuda_seconds(fn, iters: int = 20, warmup: int = 1) -> list[float]:
    """Seconds of each of `iters` calls of fn, timed by CUDA events, after warm-up calls."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return times


def median_cuda_seconds(fn, iters: int = 20, warmup: int = 1) -> float:
    """Median seconds per call of fn, timed by CUDA events, after warm-up calls."""
    times = sorted(cuda_seconds(fn, iters, warmup))
    return times[len(times) // 2]


def graph_seconds(fn, calls: int = 20, replays: int = 10) -> float:
    """GPU seconds per call of fn, launch overhead excluded: `calls` calls captured in one CUDA
    graph (as the engine's decode steps are), the median of `replays` replays, divided by calls."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # compile, autotune, allocate outside the capture
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return median_cuda_seconds(graph.replay, replays, 2) / calls
