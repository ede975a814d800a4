"""A fuzz of request bodies against a real server (issue 21): random types, ranges and nesting over
the fields of the OpenAI request schema. Every answer is a 4xx with an OpenAI-shaped error or a
valid 200; no 500, no hang; the server is healthy and holds no KV block afterwards."""

from __future__ import annotations

import json
import time

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FIELDS = ["model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k",
          "min_p", "n", "stop", "stop_token_ids", "seed", "logprobs", "top_logprobs", "echo", "stream",
          "presence_penalty", "frequency_penalty", "repetition_penalty", "ignore_eos", "stream_options",
          "response_format", "best_of", "user", "logit_bias"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 40), st.integers(-2**70, 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(-3, 3), st.text(max_size=12),
    st.sampled_from(["tiny", "hi", "", "user", "text"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(["role", "content", "type", "text"]), inner,
                                                 max_size=3)), max_leaves=8)
message = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "wizard", 5]),
                                 "content": st.one_of(st.text(max_size=20), values)})
bodies = st.dictionaries(st.sampled_from(FIELDS), values, max_size=8).flatmap(
    lambda body: st.fixed_dictionaries({
        **{k: st.just(v) for k, v in body.items()},
        "messages": st.lists(message, max_size=3) if "messages" in body else st.just([]),
    }).map(lambda full: {k: v for k, v in full.items() if k in body}))


def _check(response: httpx.Response, stream: bool) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
    elif stream:
        assert response.text.rstrip().endswith("data: [DONE]"), response.text[-300:]
    else:
        assert "choices" in response.json()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(route=st.sampled_from(["completions", "chat/completions"]), body=bodies)
def test_random_bodies_get_a_clean_answer(server, route, body):
    if isinstance(body.get("max_tokens"), int) and body["max_tokens"] > 40:
        body["max_tokens"] = 40  # keep valid requests quick: the point is the validation
    payload = json.dumps(body).encode()  # NaN / Infinity become the non-standard literals
    response = httpx.post(f"{server.url}/v1/{route}", content=payload,
                          headers={"content-type": "application/json"}, timeout=60)
    _check(response, body.get("stream") is True)


def test_the_server_is_healthy_and_idle_after_the_fuzz(server):
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
    deadline = time.monotonic() + 20
    while server.metrics()["ingot_kv_cache_blocks_used"] != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.metrics()["ingot_kv_cache_blocks_used"] == 0


def test_a_disconnect_storm_leaves_no_kv_block_behind(server):
    """100 concurrent streams, most of them abandoned after a random number of chunks."""
    import asyncio
    import random

    rng = random.Random(0)

    async def one(client: httpx.AsyncClient, leave_after: int | None) -> None:
        body = {"model": "tiny", "prompt": f"storm {rng.random()}", "max_tokens": 200, "stream": True,
                "ignore_eos": True}
        async with client.stream("POST", "/v1/completions", json=body) as response:
            assert response.status_code == 200
            seen = 0
            async for line in response.aiter_lines():
                seen += line.startswith("data:")
                if leave_after is not None and seen >= leave_after:
                    return  # leaving the block closes the connection mid-stream

    async def storm() -> None:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:
            await asyncio.gather(*(one(client, rng.choice([None, 1, 2, 5, 20, 60])) for _ in range(100)))

    asyncio.run(storm())
    deadline = time.monotonic() + 30
    while server.metrics()["ingot_kv_cache_blocks_used"] != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.metrics()["ingot_kv_cache_blocks_used"] == 0
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
