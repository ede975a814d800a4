"""The server's caps without an engine (issue 21): the flags that set them, the queue's slots per prompt,
the body-read deadline, and the guards on a request's head (431, 408) on a real uvicorn socket."""

from __future__ import annotations

import asyncio
import functools
import json
import socket
import time
from types import SimpleNamespace

import pytest
import uvicorn

from ingot.cli import make_parser
from ingot.commands.serve import _limits
from ingot.errors import ConfigError
from ingot.serve.admission import QueueSlots
from ingot.serve.app import Gate, ServerState
from ingot.serve.errors import APIError
from ingot.serve.http_protocol import GuardedH11Protocol
from ingot.serve.limits import ServeLimits
from ingot.serve.metrics import ServerMetrics


def test_flags_set_the_limits_and_bad_values_name_the_flag():
    args = make_parser().parse_args(["serve", "e", "--max-stop-strings", "4", "--read-timeout", "2.5"])
    assert _limits(args) == ServeLimits(max_stop_strings=4, read_timeout=2.5)
    assert _limits(make_parser().parse_args(["serve", "e"])) == ServeLimits()
    with pytest.raises(ConfigError, match="--max-prompts-per-request 0 must be an integer >= 1"):
        ServeLimits(max_prompts_per_request=0)
    with pytest.raises(ConfigError, match="--max-header-bytes 100 must be an integer >= 1024"):
        ServeLimits(max_header_bytes=100)
    with pytest.raises(ConfigError, match=r"--max-stop-strings 128 x --max-stop-string-chars 1024 = 131072 "
                                          r"characters, over the engine's bound of 65536"):
        ServeLimits(max_stop_strings=128)


def test_each_prompt_holds_a_queue_slot():
    state = SimpleNamespace(max_queue=4, metrics=ServerMetrics())
    first, second = QueueSlots(state), QueueSlots(state)
    first.hold(1)
    first.hold(3)  # the handler found three prompts: two more
    assert state.metrics.in_flight == 3
    with pytest.raises(APIError) as full:
        second.hold(2)
    assert full.value.status == 429 and full.value.code == "queue_full" and state.metrics.in_flight == 3
    with pytest.raises(APIError) as never:
        second.hold(5, "prompt")
    assert never.value.status == 400 and never.value.param == "prompt" and "--max-queue" in never.value.message
    first.release()
    second.hold(2)
    assert state.metrics.in_flight == 2 and first.held == 0


def test_a_body_that_stalls_is_a_408():
    gate = Gate(app=None, state=ServerState(models=None, limits=ServeLimits(read_timeout=0.2)))
    sent = []

    async def receive():
        if not sent:
            sent.append(1)
            return {"type": "http.request", "body": b"{", "more_body": True}
        await asyncio.sleep(60)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/completions", "headers": []}
    asyncio.run(asyncio.wait_for(gate(scope, receive, send), 10))
    assert sent[1]["status"] == 408
    assert json.loads(sent[2]["body"])["error"]["message"].endswith("within 0.2 s (--read-timeout)")


async def _ok(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _exchange(port: int, payload: bytes, pause: float = 0.0) -> bytes:
    """Send payload, wait `pause` seconds, then read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        time.sleep(pause)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_head_guards_on_a_real_socket():
    """A 1 MB header is answered 431 (uvicorn alone reset the connection), a head that stalls 408;
    ordinary requests pass."""
    limits = ServeLimits(max_header_bytes=4096, read_timeout=0.5)
    config = uvicorn.Config(_ok, host="127.0.0.1", port=0, log_level="error", lifespan="off",
                            http=functools.partial(GuardedH11Protocol, limits=limits),
                            h11_max_incomplete_event_size=limits.max_header_bytes)
    server = uvicorn.Server(config)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.listen()

        async def main():
            serving = asyncio.create_task(server.serve(sockets=[sock]))
            while not server.started:
                await asyncio.sleep(0.01)
            try:
                return await asyncio.gather(*(asyncio.to_thread(_exchange, port, payload, pause) for payload, pause in [
                    (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 0),
                    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n", 0),
                    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: a", 0.8),
                ]))
            finally:
                server.should_exit = True
                await serving

        plain, big, slow = asyncio.run(main())
    assert plain.startswith(b"HTTP/1.1 200") and b"\r\nok\r\n" in plain
    assert big.startswith(b"HTTP/1.1 431 Request Header Fields Too Large")
    error = json.loads(big.split(b"\r\n\r\n", 1)[1])["error"]
    assert error["code"] == "request_header_fields_too_large" and "--max-header-bytes" in error["message"]
    assert slow.startswith(b"HTTP/1.1 408")
    assert b"--read-timeout" in slow
