"""Where an offline run's time goes, step by step: every throughput record carries a step timeline
summary, and `--profile-dir DIR` adds a torch-profiler view of a window of steps.

Steps are told apart by what they computed: a decode-only step computes at most one token per
running sequence; a step that computed more carried prompt tokens (prefill or mixed). Per kind:
the count, the seconds, and for decode steps the mean step time per batch-size bucket, so a reader
sees whether the time is in prompt steps, in big-batch decode, or in the drain at the end.

The wall time of a step is what the host waited for it: with the overlap of host and device work
a decode step's time is the device's step time whenever the device is the bottleneck.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

BATCH_BUCKETS = (1, 8, 32, 128, 256, 512, 768, 1024, 2048, 4096)


@dataclass
class StepTimeline:
    decode_seconds: float = 0.0
    decode_steps: int = 0
    decode_tokens: int = 0
    prompt_seconds: float = 0.0
    prompt_steps: int = 0
    prompt_step_tokens: int = 0
    by_batch: dict[int, list[float]] = field(default_factory=dict)  # bucket -> [steps, seconds, tokens]

    def add(self, seconds: float, tokens: int, running_before: int) -> None:
        if tokens == 0:
            return
        if tokens <= running_before:
            self.decode_steps += 1
            self.decode_seconds += seconds
            self.decode_tokens += tokens
            bucket = next((b for b in BATCH_BUCKETS if tokens <= b), BATCH_BUCKETS[-1])
            entry = self.by_batch.setdefault(bucket, [0, 0.0, 0])
            entry[0] += 1
            entry[1] += seconds
            entry[2] += tokens
        else:
            self.prompt_steps += 1
            self.prompt_seconds += seconds
            self.prompt_step_tokens += tokens

    def summary(self) -> dict:
        return {
            "decode_steps": self.decode_steps, "decode_s": round(self.decode_seconds, 3),
            "decode_mean_batch": round(self.decode_tokens / max(self.decode_steps, 1), 1),
            "prompt_steps": self.prompt_steps, "prompt_s": round(self.prompt_seconds, 3),
            "prompt_step_mean_tokens": round(self.prompt_step_tokens / max(self.prompt_steps, 1), 1),
            "decode_ms_per_step_by_batch": {
                f"<={bucket}": {"steps": n, "mean_batch": round(tokens / n, 1), "ms": round(1e3 * s / n, 3)}
                for bucket, (n, s, tokens) in sorted(self.by_batch.items())},
        }


class StepRecorder:
    """Times each engine.step() into a StepTimeline; profiles steps [start, start + count) with the
    torch profiler when a directory is given."""

    def __init__(self, engine, profile_dir: str | None = None, profile_start: int = 0, profile_count: int = 0):
        self.engine = engine
        self.timeline = StepTimeline()
        self.profile_dir = Path(profile_dir) if profile_dir else None
        self.profile_start, self.profile_count = profile_start, profile_count
        self._profiler = None
        self._profiled_kinds: list[str] = []
        self._index = 0

    def step(self) -> list:
        self._maybe_start_profiler()
        running_before = self.engine.stats.running
        started = time.perf_counter()
        outputs = self.engine.step()
        seconds = time.perf_counter() - started
        tokens = self.engine.stats.tokens_scheduled
        self.timeline.add(seconds, tokens, running_before)
        if self._profiler is not None:
            self._profiled_kinds.append(f"{'decode' if tokens <= running_before else 'prompt'}:{tokens}")
            if len(self._profiled_kinds) == self.profile_count:
                self._stop_profiler()
        self._index += 1
        return outputs

    def finish(self) -> dict:
        if self._profiler is not None:
            self._stop_profiler()
        summary = self.timeline.summary()
        if self.profile_dir is not None:
            summary["profile_dir"] = str(self.profile_dir)
            summary["profiled_steps"] = self._profiled_kinds
        return summary

    def _maybe_start_profiler(self) -> None:
        if self.profile_dir is None or self._index != self.profile_start or self.profile_count <= 0:
            return
        import torch

        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.engine.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self._profiler = torch.profiler.profile(activities=activities)
        self._profiler.__enter__()

    def _stop_profiler(self) -> None:
        profiler, self._profiler = self._profiler, None
        profiler.__exit__(None, None, None)
        write_profile(profiler, self.profile_dir, self._profiled_kinds)


def write_profile(profiler, directory: Path, kinds: list[str]) -> None:
    """kernels.txt (the profiler's table by device time), kernels.json (the top kernels, summed) and
    trace.json (a Chrome trace, for chrome://tracing or Perfetto)."""
    directory.mkdir(parents=True, exist_ok=True)
    averages = profiler.key_averages()
    device_time = "cuda_time_total" if any(getattr(e, "device_time_total", 0) for e in averages) else "cpu_time_total"
    (directory / "kernels.txt").write_text(f"steps: {kinds}\n" + averages.table(sort_by=device_time, row_limit=40))
    rows = sorted(({"name": e.key, "calls": e.count, "device_us": round(getattr(e, "device_time_total", 0.0), 1),
                    "cpu_us": round(e.cpu_time_total, 1)} for e in averages),
                  key=lambda r: -(r["device_us"] or r["cpu_us"]))
    (directory / "kernels.json").write_text(json.dumps({"steps": kinds, "top": rows[:60]}, indent=1) + "\n")
    profiler.export_chrome_trace(str(directory / "trace.json"))
