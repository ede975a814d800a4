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


def test_a_client_that_leaves_mid_upload_is_one_499_line(caplog):
    """Issue 21: it was a traceback and a 500 in /metrics."""
    import logging

    state = ServerState(models=None)
    messages = [{"type": "http.request", "body": b"{", "more_body": True}, {"type": "http.disconnect"}]
    sent = []

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/completions", "headers": [], "client": ("10.0.0.7", 5)}
    with caplog.at_level(logging.INFO, "ingot.serve"):
        asyncio.run(Gate(app=None, state=state)(scope, receive, send))
    assert sent == [], "nobody is left to answer"
    assert caplog.messages == ["499 10.0.0.7: the client closed the connection before sending its whole "
                               "POST /v1/completions body"]
    assert 'ingot_http_requests_total{route="/v1/completions",status="499"} 1.0' in state.metrics.render([])


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
    ordinary requests pass. Each answer the protocol makes itself is counted for /metrics, uvicorn's
    400 to bytes that are not HTTP too."""
    limits = ServeLimits(max_header_bytes=4096, read_timeout=0.5)
    counted = []
    config = uvicorn.Config(_ok, host="127.0.0.1", port=0, log_level="critical", lifespan="off",
                            http=functools.partial(GuardedH11Protocol, limits=limits,
                                                   count=lambda path, status: counted.append((path, status))),
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
                    (b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: a", 0.8),
                    (b"NOT HTTP AT ALL\r\n\r\n", 0),
                ]))
            finally:
                server.should_exit = True
                await serving

        plain, big, slow, garbage = asyncio.run(main())
    assert plain.startswith(b"HTTP/1.1 200") and b"\r\nok\r\n" in plain
    assert big.startswith(b"HTTP/1.1 431 Request Header Fields Too Large")
    error = json.loads(big.split(b"\r\n\r\n", 1)[1])["error"]
    assert error["code"] == "request_header_fields_too_large" and "--max-header-bytes" in error["message"]
    assert slow.startswith(b"HTTP/1.1 408")
    assert b"--read-timeout" in slow
    assert garbage.startswith(b"HTTP/1.1 400")
    assert sorted(counted) == [("", 400), ("/", 431), ("/v1/models", 408)]


def _h2_frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def _stalled_grpc_call(port: int, method: bytes) -> socket.socket:
    """An HTTP/2 connection that starts a gRPC call on stream 1 and sends 8 bytes of a 100-byte message:
    what grpcio's client cannot be made to do. Headers as HPACK literals without indexing."""
    def literal(name: bytes, value: bytes) -> bytes:
        assert len(name) < 127 and len(value) < 127
        return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value

    headers = b"".join(literal(n, v) for n, v in [(b":method", b"POST"), (b":scheme", b"http"), (b":path", method),
                                                  (b":authority", b"x"), (b"content-type", b"application/grpc"),
                                                  (b"te", b"trailers")])
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _h2_frame(4, 0, 0, b"") + _h2_frame(1, 4, 1, headers)
                 + _h2_frame(0, 0, 1, (100).to_bytes(5, "big") + b"\x00" * 3))
    return sock


def _until_stream_one_ends(sock: socket.socket) -> bytes:
    """Frames read until the server ends stream 1 (trailers with END_STREAM, or RST_STREAM); their bytes."""
    seen = b""
    while True:
        chunk = sock.recv(65536)
        assert chunk, "the connection closed before the call was answered"
        seen += chunk
        offset = 0
        while offset + 9 <= len(seen):
            length, kind, flags = int.from_bytes(seen[offset:offset + 3], "big"), seen[offset + 3], seen[offset + 4]
            stream = int.from_bytes(seen[offset + 5:offset + 9], "big")
            if stream == 1 and (kind == 3 or (kind == 1 and flags & 1)):
                return seen
            offset += 9 + length


def test_grpc_holds_the_same_limits(caplog):
    """KServe v2 over gRPC: the body and header caps bound a message and its metadata; a unary call's
    message must arrive within --read-timeout; a connection that never speaks is closed after it."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    from ingot.serve import kserve_grpc
    from tests.serve.conftest import free_port

    state = SimpleNamespace(limits=ServeLimits(max_body_bytes=1024, max_header_bytes=1024, read_timeout=0.5),
                            api_key=None, draining=False)
    port = free_port()

    async def main():
        server = await kserve_grpc.start(state, "127.0.0.1", port)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
                codes = []
                for call in (stub.ServerLive(service_pb2.ServerLiveRequest(), metadata=[("x-big", "a" * 2000)]),
                             stub.ModelInfer(service_pb2.ModelInferRequest(model_name="x" * 2000))):
                    with pytest.raises(grpc.aio.AioRpcError) as refused:
                        await call
                    codes.append(refused.value.code())
                live = (await stub.ServerLive(service_pb2.ServerLiveRequest())).live
            started = time.monotonic()
            stalled = await asyncio.to_thread(_until_stream_one_ends, _stalled_grpc_call(
                port, b"/inference.GRPCInferenceService/ServerLive"))
            answered_after = time.monotonic() - started

            def closed_after() -> float:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as silent:
                    while silent.recv(4096):  # the server's SETTINGS, then nothing until it closes
                        pass
                return time.monotonic() - started
            started = time.monotonic()
            return codes, live, stalled, answered_after, await asyncio.to_thread(closed_after)
        finally:
            await server.stop(0)

    codes, live, stalled, answered_after, silent_closed_after = asyncio.run(main())
    assert codes == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2 and live
    assert b"grpc-status\x014" in stalled and answered_after < 3, "DEADLINE_EXCEEDED (4), at the deadline"
    assert "did not arrive within 0.5 s (--read-timeout)" in caplog.text
    assert silent_closed_after < 3
