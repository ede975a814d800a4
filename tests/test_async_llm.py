"""AsyncLLM: concurrent streams from an event loop, cancellation frees blocks, errors surface."""

from __future__ import annotations

import asyncio
import io
import json

import pytest

from ingot import LLM, SamplingParams
from ingot.async_llm import AsyncLLM
from ingot.cli import main
from ingot.errors import RequestError
from ingot.progress import Progress


@pytest.fixture(scope="module")
def async_llm(tiny_engine):
    llm = AsyncLLM(tiny_engine, device="cpu")
    yield llm
    llm.shutdown()


@pytest.fixture(scope="module")
def sync_llm(tiny_engine):
    return LLM(tiny_engine, device="cpu")


def test_concurrent_streams_match_offline_generation(async_llm, sync_llm):
    prompts = [f"prompt number {i}" for i in range(12)]
    params = SamplingParams(max_tokens=9, temperature=0.0, ignore_eos=True)

    async def stream(prompt):
        text = ""
        async for out in async_llm.generate(prompt, params):
            text += out.outputs[0].delta_text
        return text, out

    async def all_streams():
        return await asyncio.gather(*(stream(p) for p in prompts))

    results = asyncio.run(all_streams())
    expected = sync_llm.generate(prompts, params)
    for (text, final), want in zip(results, expected):
        assert final.finished and text == final.outputs[0].text == want.text
        assert final.outputs[0].token_ids == want.token_ids


def test_generate_async_returns_all_n_samples(async_llm):
    params = SamplingParams(max_tokens=5, temperature=1.0, n=3, seed=9, ignore_eos=True)
    out = asyncio.run(async_llm.generate_async("hi", params))
    assert [c.index for c in out.outputs] == [0, 1, 2] and all(len(c.token_ids) == 5 for c in out.outputs)


def test_cancelling_a_stream_aborts_and_frees_blocks(async_llm):
    async def cancel_early():
        params = SamplingParams(max_tokens=100, temperature=0.0, ignore_eos=True)
        agen = async_llm.generate(list(range(20)), params)
        async for out in agen:
            if len(out.outputs[0].token_ids) >= 2:
                break
        await agen.aclose()
        for _ in range(100):  # the loop thread frees the blocks on its next turn
            await asyncio.sleep(0.02)
            if async_llm.stats().kv_blocks_used == 0 and async_llm.stats().running == 0:
                return True
        return False

    assert asyncio.run(cancel_early())


def test_bad_request_raises_before_streaming(async_llm):
    async def too_long():
        async for _ in async_llm.generate(list(range(65)), SamplingParams()):
            pass

    with pytest.raises(RequestError, match="max_input_len=64"):
        asyncio.run(too_long())


def test_progress_line():
    stream = io.StringIO()
    progress = Progress(2, enabled=True, stream=stream)
    progress.update(1, 5)
    progress.update(1, 5)
    assert "2/2 requests" in stream.getvalue() and stream.getvalue().endswith("\n")


def test_bench_throughput_and_latency_cli(tiny_engine, tmp_path):
    out = tmp_path / "t.json"
    assert main(["bench", "throughput", str(tiny_engine), "--isl", "12", "--osl", "6", "--num-requests", "20",
                 "--random-lengths", "--json", str(out), "--device", "cpu"]) == 0
    result = json.loads(out.read_text())
    assert result["num_requests"] == 20 and result["output_tok_s"] > 0 and result["peak_running"] <= 8
    assert main(["bench", "latency", str(tiny_engine), "--isl", "12", "--osl", "6", "--batch-size", "3",
                 "--repeats", "1", "--json", str(out), "--device", "cpu"]) == 0
    result = json.loads(out.read_text())
    assert result["batch_size"] == 3 and result["decode_tok_s"] > 0 and result["ttft_ms"] > 0
