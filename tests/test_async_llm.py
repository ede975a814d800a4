"""AsyncLLM: concurrent streams from an event loop, cancellation frees blocks, errors surface. The
engine core runs in its own process (the default) unless a test says otherwise; aborts, stats and
failures cross that boundary."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import shutil
import signal

import pytest

from ingot import LLM, SamplingParams
from ingot.async_llm import AsyncLLM
from ingot.cli import main
from ingot.errors import EngineError, RequestError
from ingot.progress import Progress


@pytest.fixture(scope="module")
def async_llm(tiny_engine):
    llm = AsyncLLM(tiny_engine, device="cpu")
    yield llm
    llm.shutdown()


@pytest.fixture(scope="module")
def thread_llm(tiny_engine):
    """The engine on a thread of this process (`ingot serve --engine-in-process`)."""
    llm = AsyncLLM(tiny_engine, device="cpu", in_process=True)
    yield llm
    llm.shutdown()


@pytest.fixture(scope="module")
def sync_llm(tiny_engine):
    return LLM(tiny_engine, device="cpu")


@pytest.mark.parametrize("mode", ["async_llm", "thread_llm"])
def test_concurrent_streams_match_offline_generation(mode, request, sync_llm):
    async_llm = request.getfixturevalue(mode)
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

    asyncio.run(cancel_early())
    assert _wait_idle(async_llm)


def _wait_idle(async_llm) -> bool:
    async def wait() -> bool:
        for _ in range(100):  # the core frees the blocks on its next turn
            await asyncio.sleep(0.02)
            if async_llm.stats().kv_blocks_used == 0 and async_llm.stats().running == 0:
                return True
        return False
    return asyncio.run(wait())


def test_abort_by_id_ends_every_sample_and_frees_blocks(async_llm):
    async def abort_midway():
        params = SamplingParams(max_tokens=100, temperature=1.0, n=2, seed=1, ignore_eos=True)
        reasons = {}
        async for out in async_llm.generate(list(range(20)), params, request_id="to-abort"):
            if not reasons:
                assert async_llm.stats().kv_blocks_used > 0
                async_llm.abort("to-abort")
            reasons.update({c.index: c.finish_reason for c in out.outputs})
        return reasons, out

    reasons, last = asyncio.run(abort_midway())
    assert reasons == {0: "abort", 1: "abort"} and last.finished
    assert all(len(c.token_ids) < 100 for c in last.outputs)
    assert _wait_idle(async_llm)


def test_stats_cross_the_boundary(async_llm):
    before = async_llm.stats()
    params = SamplingParams(max_tokens=7, temperature=0.0, ignore_eos=True)
    out = asyncio.run(async_llm.generate_async(list(range(1, 12)), params))
    after = async_llm.stats()
    assert len(out.outputs[0].token_ids) == 7
    assert after.generation_tokens_total - before.generation_tokens_total == 7
    assert after.prompt_tokens_total - before.prompt_tokens_total == 11 and after.num_steps > before.num_steps


def test_a_request_id_in_use_is_refused_at_once(async_llm):
    async def twice():
        first = async_llm.generate([1, 2, 3], SamplingParams(max_tokens=50, ignore_eos=True), request_id="same")
        await first.__anext__()
        try:
            with pytest.raises(RequestError, match="request_id 'same' is already in use"):
                await async_llm.generate([4, 5], SamplingParams(max_tokens=2), request_id="same").__anext__()
        finally:
            await first.aclose()

    asyncio.run(twice())
    assert _wait_idle(async_llm)


def test_a_core_that_dies_fails_open_and_new_requests(tiny_engine):
    llm = AsyncLLM(tiny_engine, device="cpu")

    async def kill_midway():
        reasons = []
        async for out in llm.generate([1, 2, 3], SamplingParams(max_tokens=100, ignore_eos=True)):
            if not reasons:
                os.kill(llm._core.pid, signal.SIGKILL)
            reasons.append(out.outputs[0].finish_reason)
        return reasons

    try:
        assert asyncio.run(kill_midway())[-1] == "abort"
        message = f"the engine core process (pid {llm._core.pid}) was killed by signal SIGKILL"
        assert message in llm.failure()
        with pytest.raises(EngineError, match=re.escape(message)):
            asyncio.run(llm.generate_async([1, 2], SamplingParams(max_tokens=2)))
    finally:
        llm.shutdown()


def test_an_engine_the_core_cannot_load_raises_its_error(tiny_engine, tmp_path):
    engine_dir = tmp_path / "engine"
    shutil.copytree(tiny_engine, engine_dir)
    path = engine_dir / "rank0.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(EngineError, match="rank0.safetensors: bytes .* do not match the SHA-256"):
        AsyncLLM(engine_dir, device="cpu")


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
