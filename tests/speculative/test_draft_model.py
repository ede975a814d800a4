"""draft_target: a separate, smaller ingot engine drafts for the target. Greedy output equals the
target alone whatever the draft (the target itself as its own draft accepts everything; a
different one-layer model accepts little); the draft's KV is rewound with the target's and freed
when requests end or are aborted; mismatched or missing drafts are refused naming the fix."""

from __future__ import annotations

import random

import pytest

from ingot.config import BuildConfig, CacheConfig, SchedulerConfig, SpeculativeConfig
from ingot.engine_format import read_spec
from ingot.errors import ConfigError
from ingot.runtime.engine import LLMEngine
from ingot.sampling_params import SamplingParams
from tests.tiny_models import make_checkpoint

ENVELOPE = dict(dtype="fp32", max_batch_size=8, max_input_len=64, max_seq_len=128, max_num_tokens=64,
                tokens_per_block=8)


def _build(checkpoint, directory, speculative=None, **envelope):
    from ingot.builder.build import build_engine

    build_engine(str(checkpoint), directory, BuildConfig(**{**ENVELOPE, **envelope}), device="cpu",
                 speculative=speculative)
    return directory


@pytest.fixture(scope="module")
def engines(tiny_checkpoint, tiny_engine, tmp_path_factory):
    root = tmp_path_factory.mktemp("draft-target")
    small = root / "small-ckpt"
    make_checkpoint(small, "LlamaForCausalLM", seed=5, num_hidden_layers=1)
    return {
        "target": _build(tiny_checkpoint[0], root / "target", SpeculativeConfig("draft_target", max_draft_len=4)),
        "plain": tiny_engine,  # the same weights without speculation
        "small_draft": _build(small, root / "small"),
    }


def _engine(engines, draft, max_num_tokens=16, cache_bytes=None):
    build = read_spec(engines["target"]).build
    lookahead = 0 if cache_bytes else None  # a small pool is there to preempt: admit whatever fits now
    return LLMEngine(engines["target"], CacheConfig(max_cache_bytes=cache_bytes), device="cpu",
                     scheduler_config=SchedulerConfig.for_engine(build, max_num_tokens=max_num_tokens,
                                                                 admission_lookahead=lookahead),
                     draft_engine=draft)


def _workload(seed=0, count=12):
    rng = random.Random(seed)
    return [([rng.randrange(250) for _ in range(rng.randint(1, 30))], rng.randint(1, 40)) for _ in range(count)]


def _run(engine, work, seed=0):
    """Requests arrive at random steps (in-flight batching); returns them in submission order."""
    rng, pending, requests = random.Random(seed), list(work), []
    while pending or engine.has_unfinished_requests():
        while pending and (not engine.has_unfinished_requests() or rng.random() < 0.4):
            prompt, max_tokens = pending.pop(0)
            requests.append(engine.add_request(prompt, SamplingParams(max_tokens=max_tokens, temperature=0.0,
                                                                      ignore_eos=True)))
        engine.step()
    return requests


@pytest.fixture(scope="module")
def plain_outputs(engines):
    plain = LLMEngine(engines["plain"], CacheConfig(), device="cpu")
    return [r.output_token_ids for r in _run(plain, _workload())]


@pytest.mark.parametrize("draft", ["plain", "small_draft"])
def test_greedy_output_equals_the_target_alone(engines, plain_outputs, draft):
    engine = _engine(engines, engines[draft])
    assert [r.output_token_ids for r in _run(engine, _workload())] == plain_outputs
    stats = engine.stats
    assert stats.draft_tokens_total > 0
    if draft == "plain":  # the same model drafts exactly what the target decodes
        assert stats.draft_acceptance_rate > 0.95, stats
        assert stats.mean_accepted_length > 3.5, stats
    else:
        assert stats.draft_acceptance_rate < 0.5, stats
    draft_engine = engine.proposer.draft
    assert not engine.proposer.mirrors and not draft_engine.has_unfinished_requests()
    assert draft_engine.kv.pool.num_free == draft_engine.kv.pool.num_usable, "the draft's KV leaked"
    assert engine.kv.pool.num_free == engine.kv.pool.num_usable


def test_a_small_kv_pool_preempts_and_aborts_leave_nothing_behind(engines, plain_outputs):
    engine = _engine(engines, engines["small_draft"], cache_bytes=20 * 3072)  # the target preempts and recomputes
    work = _workload()
    requests = _run(engine, work)
    assert [r.output_token_ids for r in requests] == plain_outputs
    assert engine.stats.preempted_total > 0
    aborted = [engine.add_request(prompt, SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True))
               for prompt, _ in work[:4]]
    for _ in range(3):
        engine.step()
    for request in aborted:
        engine.abort_request(request.request_id)
    while engine.has_unfinished_requests():
        engine.step()
    draft_engine = engine.proposer.draft
    assert not engine.proposer.mirrors
    assert draft_engine.kv.pool.num_free == draft_engine.kv.pool.num_usable
    assert engine.kv.pool.num_free == engine.kv.pool.num_usable


def test_mismatched_or_missing_drafts_are_refused(engines, tiny_checkpoint, tmp_path):
    with pytest.raises(ConfigError, match="pass --draft-engine DIR"):
        LLMEngine(engines["target"], device="cpu")
    with pytest.raises(ConfigError, match="built with --speculative draft_target"):
        LLMEngine(engines["plain"], device="cpu", draft_engine=engines["small_draft"])
    short = _build(tiny_checkpoint[0], tmp_path / "short", max_seq_len=96)
    with pytest.raises(ConfigError, match="max_seq_len 96 is below the target's 128; rebuild the draft with "
                                          "--max-seq-len 128"):
        _engine(engines, short)
    other_vocab = tmp_path / "other-ckpt"
    make_checkpoint(other_vocab, "LlamaForCausalLM", seed=1, vocab_size=300)
    with pytest.raises(ConfigError, match="differs from the target"):
        _engine(engines, _build(other_vocab, tmp_path / "other"))


def test_cli_builds_inspects_and_runs_with_a_draft_engine(tiny_checkpoint, tiny_engine, tmp_path, capsys):
    from ingot.cli import main

    target = tmp_path / "target"
    assert main(["build", str(tiny_checkpoint[0]), "-o", str(target), "--max-seq-len", "128", "--max-input-len", "64",
                 "--max-batch-size", "4", "--device", "cpu", "--speculative", "draft_target", "--max-draft-len", "3"]) == 0
    assert main(["inspect", str(target)]) == 0
    assert "draft_target: up to 3 draft tokens a step (from the draft engine given at run time" in capsys.readouterr().out
    assert main(["run", str(target), "hello", "--max-tokens", "6", "--device", "cpu", "--draft-engine",
                 str(tiny_engine)]) == 0
    assert main(["run", str(target), "hello", "--max-tokens", "6", "--device", "cpu"]) != 0
    assert "pass --draft-engine DIR" in capsys.readouterr().err


def test_async_llm_drafts_in_its_engine_core_process(engines, plain_outputs):
    """`ingot serve --draft-engine DIR`: the draft engine is opened by the engine core process."""
    import asyncio

    from ingot.async_llm import AsyncLLM

    llm = AsyncLLM(engines["target"], device="cpu", draft_engine=engines["small_draft"])
    work = _workload()[:4]

    async def run():
        return await asyncio.gather(*(llm.generate_async(prompt, SamplingParams(max_tokens=max_tokens, temperature=0.0,
                                                                                ignore_eos=True))
                                      for prompt, max_tokens in work))

    try:
        assert [out.outputs[0].token_ids for out in asyncio.run(run())] == plain_outputs[:4]
        assert llm.stats().draft_tokens_total > 0
    finally:
        llm.shutdown()
