"""Launching and losing ranks: two "hosts" on loopback under torchrun serve one request, and a
worker killed mid-generation stops `ingot serve` within its timeout with a message naming the
rank, leaving no process behind (the server's engine core process starts the worker ranks)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.serve.conftest import build_serve_engine, free_port, start_server

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    from tests.tiny_models import make_checkpoint

    checkpoint = tmp_path_factory.mktemp("launch-ckpt")
    make_checkpoint(checkpoint, "LlamaForCausalLM", seed=13, max_position_embeddings=4096)
    base = tmp_path_factory.mktemp("launch-engines")
    return build_serve_engine(checkpoint, base / "tp1"), build_serve_engine(checkpoint, base / "tp2", tp=2)


def _ingot_run(engine: Path, *launcher: str) -> subprocess.Popen:
    args = [*launcher, "-m", "ingot.cli"] if launcher else [sys.executable, "-m", "ingot.cli"]
    return subprocess.Popen([*args, "run", str(engine), "The quick brown fox", "--max-tokens", "12"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def test_two_torchrun_nodes_serve_one_request(engines):
    """`torchrun --nnodes 2`, one process each: rank 0 runs `ingot run`, rank 1 becomes its worker."""
    tp1, tp2 = engines
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    port = free_port()
    nodes = [_ingot_run(tp2, torchrun, "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(rank),
                        "--master-addr", "127.0.0.1", "--master-port", str(port)) for rank in (0, 1)]
    outputs = [node.communicate(timeout=180) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    single = _ingot_run(tp1)
    expected, _ = single.communicate(timeout=120)
    assert outputs[0][0] == expected and expected.strip(), "rank 0 prints what one rank prints"
    assert outputs[1][0] == "", "the worker rank prints nothing"


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _descendants(pid: int) -> list[int]:
    children = _children(pid)
    return children + [d for c in children for d in _descendants(c)]


def _worker_ranks(pid: int) -> list[int]:
    """The spawned rank processes (multiprocessing's resource tracker is a child too)."""
    return [c for c in _descendants(pid) if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()]


def _running(pid: int) -> bool:
    """Exists and is not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_a_killed_worker_stops_the_server_with_a_message(engines, tmp_path):
    _, tp2 = engines
    server = start_server(tp2, tmp_path / "server.log")
    children = _descendants(server.process.pid)
    workers = _worker_ranks(server.process.pid)
    assert len(workers) == 1, "rank 1 runs in a process of its own"
    with httpx.stream("POST", f"{server.url}/v1/completions", timeout=60,
                      json={"prompt": "a long story", "max_tokens": 3000, "stream": True, "ignore_eos": True}) as stream:
        lines = stream.iter_lines()
        next(line for line in lines if line.startswith("data: {"))  # generating
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        rest = "\n".join(lines)
    assert '"error"' in rest and rest.rstrip().endswith("[DONE]"), "the open stream ends with an error event"
    started = time.monotonic()
    code = server.process.wait(timeout=30)
    log = server.log.read_text()
    assert code == 1 and time.monotonic() - started < 30
    assert "worker rank 1" in log and "shutting down" in log, log[-2000:]
    deadline = time.monotonic() + 10
    while any(_running(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in children if _running(pid)], "no process is left behind"
