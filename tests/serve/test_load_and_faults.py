"""Many clients at once, clients that leave, a full queue, a missing key, and signals."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import openai
import pytest

from ingot import SamplingParams
from tests.serve.conftest import API_KEY, start_server

# Thousands of steps: still running when the test looks, however fast the machine.
LONG = {"model": "tiny", "prompt": "a long one", "max_tokens": 4000, "stream": True, "ignore_eos": True}


def test_fifty_concurrent_streams_complete_correctly(server, reference):
    prompts = [f"client {i}: {'ab' * (i % 7)}" for i in range(50)]
    expected = [o.text for o in reference.generate(
        prompts, SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))]

    async def one(client, prompt: str) -> tuple[str, str, int]:
        stream = await client.completions.create(model="tiny", prompt=prompt, max_tokens=8, temperature=0,
                                                 stream=True, stream_options={"include_usage": True},
                                                 extra_body={"ignore_eos": True})
        text, reason, tokens = "", None, 0
        async for chunk in stream:
            for choice in chunk.choices:
                text += choice.text
                reason = choice.finish_reason or reason
            tokens = chunk.usage.completion_tokens if chunk.usage else tokens
        return text, reason, tokens

    async def main():
        async with server.async_client() as client:
            return await asyncio.gather(*(one(client, p) for p in prompts))

    results = asyncio.run(main())
    assert [r[0] for r in results] == expected
    assert all(r[1:] == ("length", 8) for r in results)


def _wait_for(server, condition, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        metrics = server.metrics()
        if condition(metrics) or time.monotonic() > deadline:
            return metrics
        time.sleep(0.05)


def _open_streams(server, count: int, headers=None) -> tuple[httpx.Client, list]:
    """Start `count` long streams and read until each has sent its first token. The line iterators
    are kept: dropping one would close its connection (a disconnect) before the test means to."""
    client = httpx.Client(base_url=server.url, timeout=60, headers=headers or {})
    streams = []
    for _ in range(count):
        response = client.send(client.build_request("POST", "/v1/completions", json=LONG), stream=True)
        assert response.status_code == 200, response.read()
        lines = response.iter_lines()
        while not (line := next(lines)).startswith("data:"):
            pass
        assert '"text"' in line, line
        streams.append((response, lines))
    return client, streams


def _close(client: httpx.Client, streams: list) -> None:
    for response, lines in streams:
        lines.close()
        response.close()
    client.close()


def test_disconnected_streams_are_aborted_and_free_their_blocks(server):
    before = server.metrics().get('ingot_request_finished_total{reason="abort"}', 0)
    client, streams = _open_streams(server, 4)
    busy = server.metrics()
    assert busy["ingot_num_requests_running"] == 4 and busy["ingot_kv_cache_blocks_used"] > 0
    _close(client, streams)
    idle = _wait_for(server, lambda m: m["ingot_kv_cache_blocks_used"] == 0 and m["ingot_num_requests_running"] == 0)
    assert idle["ingot_num_requests_running"] == 0
    assert idle["ingot_kv_cache_blocks_used"] == 0, "the aborted requests' KV blocks are free again"
    assert idle['ingot_request_finished_total{reason="abort"}'] == before + 4
    assert idle["ingot_generation_tokens_total"] - busy["ingot_generation_tokens_total"] < 4 * 2000, "stopped early"


def test_disconnected_non_streaming_request_is_aborted(server):
    before = server.metrics().get('ingot_request_finished_total{reason="abort"}', 0)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/completions", json={**LONG, "stream": False}, timeout=1.0)
    idle = _wait_for(server, lambda m: m['ingot_request_finished_total{reason="abort"}'] == before + 1)
    assert idle['ingot_request_finished_total{reason="abort"}'] == before + 1
    idle = _wait_for(server, lambda m: m["ingot_kv_cache_blocks_used"] == 0)
    assert idle["ingot_kv_cache_blocks_used"] == 0


def test_full_queue_answers_429_at_once(guarded_server):
    client, streams = _open_streams(guarded_server, 2, headers={"Authorization": f"Bearer {API_KEY}"})
    try:
        started = time.monotonic()
        with pytest.raises(openai.RateLimitError) as info:
            guarded_server.client().completions.create(model="tiny", prompt="one more", max_tokens=2)
        assert time.monotonic() - started < 5
        assert info.value.code == "queue_full" and "max-queue" in info.value.message
    finally:
        _close(client, streams)
    _wait_for(guarded_server, lambda m: m["ingot_requests_in_flight"] == 0)
    out = guarded_server.client().completions.create(model="tiny", prompt="room again", max_tokens=2)
    assert out.usage.completion_tokens == 2


def test_api_key_required(guarded_server):
    with pytest.raises(openai.AuthenticationError) as info:
        guarded_server.client(api_key="wrong").completions.create(model="tiny", prompt="hi", max_tokens=2)
    assert info.value.code == "invalid_api_key"
    no_header = httpx.post(f"{guarded_server.url}/v1/chat/completions", json={"messages": []})
    assert no_header.status_code == 401 and no_header.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(f"{guarded_server.url}/v1/models").status_code == 401
    assert guarded_server.client().models.list().data[0].id == "tiny"
    assert httpx.post(f"{guarded_server.url}/tokenize", json={"prompt": "hi"}).status_code == 401
    assert httpx.get(f"{guarded_server.url}/tokenizer_info", headers={"Authorization": f"Bearer {API_KEY}"}
                     ).status_code == 200
    assert httpx.get(f"{guarded_server.url}/health").status_code == 200, "health and metrics stay open"
    assert httpx.get(f"{guarded_server.url}/metrics").status_code == 200


def test_sigterm_with_a_stream_open_shuts_down_cleanly(serve_engine, tmp_path):
    """The stream gets --shutdown-timeout to finish, is then aborted, and the engine stops.
    (The session servers' teardowns check SIGTERM and SIGINT on idle servers.)"""
    server = start_server(serve_engine, tmp_path / "server.log", "--shutdown-timeout", "1")
    try:
        client, streams = _open_streams(server, 1)
        started = time.monotonic()
        assert server.stop(signal.SIGTERM, timeout=60) == 0, server.log.read_text()
        assert time.monotonic() - started < 20
        _close(client, streams)
    finally:
        if server.process.poll() is None:
            server.process.kill()
    assert "ingot serve: stopped" in server.log.read_text()
