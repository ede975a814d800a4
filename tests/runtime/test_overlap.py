"""Overlapped decode (async_output): steps launched before the previous step's tokens are read
back give exactly the synchronous results, stop where they should, and abort cleanly."""

from __future__ import annotations

from ingot.runtime.engine import LLMEngine
from ingot.sampling_params import SamplingParams


def _run(engine: LLMEngine, prompts, params) -> tuple[list, int]:
    requests = [engine.add_request(p, params) for p in prompts]
    overlapped = 0
    while engine.has_unfinished_requests():
        engine.step()
        overlapped += engine.runner.in_flight is not None
    return requests, overlapped


def test_overlapped_decode_equals_synchronous(tiny_engine):
    prompts = ["one", "two words", "a somewhat longer prompt", "x"]
    for params in (SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True),
                   SamplingParams(max_tokens=17, temperature=0.9, seed=3, ignore_eos=True)):
        sync, _ = _run(LLMEngine(tiny_engine, device="cpu", async_output=False), prompts, params)
        overlap_engine = LLMEngine(tiny_engine, device="cpu", async_output=True)
        over, overlapped = _run(overlap_engine, prompts, params)
        assert overlapped > 10, "decode steps were overlapped"
        assert [r.output_token_ids for r in over] == [r.output_token_ids for r in sync]
        assert [r.output_text for r in over] == [r.output_text for r in sync]
        assert all(r.finish_reason == "length" for r in over)
        assert overlap_engine.stats.kv_blocks_used == 0


def test_stops_inside_the_overlap_drop_the_extra_token(tiny_engine):
    sync_engine = LLMEngine(tiny_engine, device="cpu", async_output=False)
    (free,), _ = _run(sync_engine, ["abc"], SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True))
    stop_token = free.output_token_ids[6]
    stop_text = free.output_text[2:5]
    for params in (SamplingParams(max_tokens=20, temperature=0.0, stop_token_ids=[stop_token]),
                   SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True, stop=[stop_text])):
        (want,), _ = _run(LLMEngine(tiny_engine, device="cpu", async_output=False), ["abc"], params)
        engine = LLMEngine(tiny_engine, device="cpu", async_output=True)
        (got,), _ = _run(engine, ["abc"], params)
        assert got.output_token_ids == want.output_token_ids and got.output_text == want.output_text
        assert got.finish_reason == "stop" and engine.stats.kv_blocks_used == 0


def test_abort_while_a_step_is_in_flight(tiny_engine):
    engine = LLMEngine(tiny_engine, device="cpu", async_output=True)
    request = engine.add_request("abort me", SamplingParams(max_tokens=50, temperature=0.0, ignore_eos=True))
    while engine.runner.in_flight is None:
        engine.step()
    engine.abort_request(request.request_id)
    assert -1 not in request.output_token_ids, "the in-flight placeholder is dropped"
    while engine.has_unfinished_requests():
        engine.step()
    assert request.finish_reason == "abort" and engine.stats.kv_blocks_used == 0
