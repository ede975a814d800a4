"""In-flight batching: each request produces exactly the tokens it produces alone, whatever
arrives beside it, under both capacity policies, with chunked prefill, prefix reuse on and off,
and a pool so small that max_utilization must preempt."""

from __future__ import annotations

import random

import pytest

from ingot.config import CacheConfig, SchedulerConfig
from ingot.runtime.engine import LLMEngine
from ingot.sampling_params import SamplingParams

NUM_REQUESTS = 56
SHARED_PREFIX = list(range(40, 72))  # 32 tokens = 4 blocks of 8: some prompts share it


def _workload(seed: int = 0):
    """(arrival step, prompt ids, max_tokens) for each request."""
    rng = random.Random(seed)
    work = []
    for _ in range(NUM_REQUESTS):
        prompt = [rng.randrange(300) for _ in range(rng.randint(1, 30))]
        if rng.random() < 0.4:
            prompt = SHARED_PREFIX + prompt
        work.append((rng.randint(0, 60), prompt, rng.randint(1, 24)))
    return work


def _engine(engine_dir, policy="max_utilization", prefix=True, max_num_tokens=64, cache_bytes=None,
            async_output=False, lookahead=None):
    from ingot.engine_format import read_spec

    build = read_spec(engine_dir).build
    return LLMEngine(engine_dir, CacheConfig(enable_prefix_caching=prefix, max_cache_bytes=cache_bytes),
                     device="cpu",
                     scheduler_config=SchedulerConfig.for_engine(build, policy, max_num_tokens=max_num_tokens,
                                                                 admission_lookahead=lookahead),
                     async_output=async_output)


def _run_mixed(engine: LLMEngine, work) -> tuple[dict[int, list[int]], list]:
    """Submit each request at its arrival step; return outputs by index and the per-step batches."""
    requests, batches, step = {}, [], 0
    pending = sorted(range(len(work)), key=lambda i: work[i][0])
    while pending or engine.has_unfinished_requests():
        while pending and work[pending[0]][0] <= step:
            index = pending.pop(0)
            _, prompt, max_tokens = work[index]
            params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
            requests[index] = engine.add_request(prompt, params)
        batch_probe = engine.scheduler  # inspect limits before the step runs
        engine.step()
        batches.append((len(batch_probe.running), engine.stats.tokens_scheduled))
        step += 1
    return {i: r.output_token_ids for i, r in requests.items()}, batches


@pytest.fixture(scope="module")
def alone(tiny_engine):
    """Each request run by itself, in a fresh engine, with prefix caching off."""
    engine = _engine(tiny_engine, prefix=False)
    outputs = {}
    for index, (_, prompt, max_tokens) in enumerate(_workload()):
        request = engine.add_request(prompt, SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True))
        while engine.has_unfinished_requests():
            engine.step()
        outputs[index] = request.output_token_ids
    return outputs


CASES = {
    "max_util-prefix": dict(policy="max_utilization", prefix=True),
    "max_util-noprefix": dict(policy="max_utilization", prefix=False),
    "no_evict-prefix": dict(policy="guaranteed_no_evict", prefix=True),
    "chunked-16": dict(policy="max_utilization", prefix=True, max_num_tokens=16),
    "chunked-7-noprefix": dict(policy="guaranteed_no_evict", prefix=False, max_num_tokens=7),
    # admitting whatever fits now (no forecast) preempts in a pool this small
    "tiny-pool-preempts": dict(policy="max_utilization", prefix=True, cache_bytes=20 * 3072, lookahead=0),
    "tiny-pool-forecast": dict(policy="max_utilization", prefix=True, cache_bytes=20 * 3072),
    "tiny-pool-no-evict": dict(policy="guaranteed_no_evict", prefix=True, cache_bytes=20 * 3072),
    # decode steps overlapped with post-processing (the CUDA default), here on the eager CPU path
    "overlap-prefix": dict(policy="max_utilization", prefix=True, async_output=True),
    "overlap-tiny-pool": dict(policy="max_utilization", prefix=True, cache_bytes=20 * 3072, async_output=True,
                              lookahead=0),
}


@pytest.mark.parametrize("case", CASES)
def test_batched_equals_alone(tiny_engine, alone, case):
    engine = _engine(tiny_engine, **CASES[case])
    outputs, batches = _run_mixed(engine, _workload())
    mismatched = [i for i in outputs if outputs[i] != alone[i]]
    assert not mismatched, f"{len(mismatched)} requests differ from their solo run: {mismatched[:5]}"
    config = engine.scheduler.config
    assert all(running <= config.max_batch_size and tokens <= config.max_num_tokens for running, tokens in batches)
    stats = engine.stats
    if CASES[case]["policy"] == "guaranteed_no_evict":
        assert stats.preempted_total == 0
    if case == "tiny-pool-preempts":
        assert stats.preempted_total > 0, "the pool was meant to be too small"
    assert stats.kv_blocks_used == 0 and stats.running == 0 and stats.waiting == 0
    if CASES[case]["prefix"]:
        assert stats.prefix_cache_hits > 0


def test_prefix_reuse_computes_fewer_tokens_and_reports_the_hit_rate(tiny_engine):
    prompt = list(range(100, 164))  # 64 tokens = 8 full blocks
    params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    engine = _engine(tiny_engine, prefix=True)
    first = engine.add_request(prompt, params)
    while engine.has_unfinished_requests():
        engine.step()
    second = engine.add_request(prompt, params)
    while engine.has_unfinished_requests():
        engine.step()
    assert second.output_token_ids == first.output_token_ids
    stats = engine.stats
    # The second request reuses 7 of its 8 blocks: the last token is always recomputed for its logits.
    assert stats.prefix_cache_hits == 56 and stats.prefix_cache_queries == 128
    assert stats.prefix_cache_hit_rate == pytest.approx(56 / 128)
    assert stats.prompt_tokens_computed_total == 64 + 8
    off = _engine(tiny_engine, prefix=False)
    for _ in range(2):
        off.add_request(prompt, params)
        while off.has_unfinished_requests():
            off.step()
    assert off.stats.prompt_tokens_computed_total == 128 and off.stats.prefix_cache_hit_rate == 0.0


def test_n_samples_share_the_prompt_and_reproduce_with_a_seed(tiny_engine):
    from ingot.runtime.samples import make_sample_requests

    prompt = list(range(10, 50))  # 40 tokens: 5 blocks, 4 reusable
    params = SamplingParams(max_tokens=6, temperature=1.0, seed=42, n=4, ignore_eos=True)
    runs = []
    for _ in range(2):
        engine = _engine(tiny_engine, prefix=True)
        samples = make_sample_requests(engine, prompt, params)
        for sample in samples:
            engine.submit(sample)
        while engine.has_unfinished_requests():
            engine.step()
        runs.append([s.output_token_ids for s in samples])
        assert engine.stats.prompt_tokens_computed_total == 40 + 3 * 8, "siblings reuse 4 of 5 prompt blocks"
    assert runs[0] == runs[1]
    assert len({tuple(tokens) for tokens in runs[0]}) > 1


def test_abort_mid_generation_frees_blocks_at_once(tiny_engine):
    engine = _engine(tiny_engine, prefix=False)
    request = engine.add_request(list(range(30)), SamplingParams(max_tokens=50, temperature=0.0, ignore_eos=True))
    for _ in range(3):
        engine.step()
    assert engine.stats.kv_blocks_used > 0 and request.num_output_tokens == 3
    engine.abort_request(request.request_id)
    engine.step()
    assert engine.stats.kv_blocks_used == 0 and not engine.has_unfinished_requests()
    assert request.finish_reason == "abort"
