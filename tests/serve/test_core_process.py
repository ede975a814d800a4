"""The boundary between `ingot serve` and its engine core process: a core that dies takes the
server down with a message naming it, and leaves no process behind."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx

from tests.serve.conftest import start_server


def _core_pid(server_pid: int) -> int:
    children = Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split()
    (core,) = [int(c) for c in children if b"ingot.runtime.core_process" in Path(f"/proc/{c}/cmdline").read_bytes()]
    return core


def test_a_killed_core_stops_the_server_with_a_message(serve_engine, tmp_path):
    server = start_server(serve_engine, tmp_path / "server.log")
    try:
        core = _core_pid(server.process.pid)
        with httpx.stream("POST", f"{server.url}/v1/completions", timeout=60,
                          json={"prompt": "a long story", "max_tokens": 3000, "stream": True,
                                "ignore_eos": True}) as stream:
            lines = stream.iter_lines()
            next(line for line in lines if line.startswith("data: {"))  # generating
            os.kill(core, signal.SIGKILL)
            rest = "\n".join(lines)
        assert '"finish_reason":"abort"' in rest.replace(" ", "") and '"engine_stopped"' in rest
        assert rest.rstrip().endswith("[DONE]"), "the open stream ends with an error event"
        started = time.monotonic()
        assert server.process.wait(timeout=30) == 1
        assert time.monotonic() - started < 30
    finally:
        if server.process.poll() is None:
            server.process.kill()
    log = server.log.read_text()
    assert f"the engine core process (pid {core}) was killed by signal SIGKILL" in log, log[-2000:]
    assert "shutting down" in log and "Traceback" not in log, log[-2000:]
