"""Preemption through the real engine: the computed / recomputed token counters are exact."""

from __future__ import annotations

import random

import pytest

from ingot.config import CacheConfig, SchedulerConfig
from ingot.engine_format import read_spec
from ingot.runtime.engine import LLMEngine
from ingot.sampling_params import SamplingParams

BLOCK_BYTES = 3072  # one block of 8 tokens of the tiny engine (2 layers x K,V x 2 heads x 12 x fp32)


def _engine(engine_dir, num_blocks: int, prefix: bool = False, **scheduler) -> LLMEngine:
    build = read_spec(engine_dir).build
    return LLMEngine(engine_dir, CacheConfig(max_cache_bytes=num_blocks * BLOCK_BYTES, enable_prefix_caching=prefix),
                     device="cpu", async_output=False, scheduler_config=SchedulerConfig.for_engine(build, **scheduler))


def _useful_positions(requests) -> int:
    """Positions a run computes at least once: every token but each request's last."""
    return sum(r.num_tokens - 1 for r in requests)


def test_recomputed_tokens_are_what_the_victims_had_computed(tiny_engine):
    # 19 usable blocks of 8 tokens: two requests of 40 + 60 tokens (13 blocks each) cannot both
    # finish; admitting whatever fits now (no forecast) starts both and preempts one
    engine = _engine(tiny_engine, num_blocks=20, admission_lookahead=0)
    params = SamplingParams(max_tokens=60, temperature=0.0, ignore_eos=True)
    requests = [engine.add_request(list(range(10 + i, 50 + i)), params) for i in range(2)]
    dropped = 0  # tokens each victim had computed when it was preempted, summed
    while engine.has_unfinished_requests():
        before = {r: (r.num_preemptions, r.num_computed_tokens) for r in requests}
        engine.step()
        dropped += sum(computed for r, (count, computed) in before.items() if r.num_preemptions > count)
    stats = engine.stats
    assert stats.preempted_total > 0 and dropped > 40, "the pool was meant to force a preemption after the prompts"
    assert stats.recomputed_tokens_total == dropped
    assert stats.computed_tokens_total == _useful_positions(requests) + dropped
    assert stats.recomputed_fraction == dropped / stats.computed_tokens_total
    assert all(r.num_output_tokens == 60 for r in requests)


def test_without_preemption_nothing_is_recomputed(tiny_engine):
    engine = _engine(tiny_engine, num_blocks=64)
    params = SamplingParams(max_tokens=9, temperature=0.0, ignore_eos=True)
    requests = [engine.add_request(list(range(5, 5 + n)), params) for n in (3, 17, 30)]
    while engine.has_unfinished_requests():
        engine.step()
    stats = engine.stats
    assert stats.preempted_total == 0 and stats.recomputed_tokens_total == 0
    assert stats.computed_tokens_total == _useful_positions(requests) == (3 + 17 + 30) + 3 * 8


def _random_lengths_workload(num: int = 40, isl: int = 32, osl: int = 16, seed: int = 0):
    """(prompt, max_tokens) per request, lengths uniform in [len/2, len*3/2], as the offline bench draws them."""
    rng = random.Random(seed)
    return [([rng.randrange(300) for _ in range(rng.randint(isl // 2, isl * 3 // 2))],
             rng.randint(osl // 2, osl * 3 // 2)) for _ in range(num)]


@pytest.fixture(scope="module")
def alone(tiny_engine):
    """Each request of the workload run by itself, in a fresh engine with a pool to spare."""
    engine = _engine(tiny_engine, num_blocks=64)
    outputs = []
    for prompt, max_tokens in _random_lengths_workload():
        request = engine.add_request(prompt, SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True))
        while engine.has_unfinished_requests():
            engine.step()
        outputs.append(request.output_token_ids)
    return outputs


@pytest.mark.parametrize("lookahead", [None, 0], ids=["forecast", "admit-what-fits-now"])
def test_an_overloaded_workload_recomputes_little_and_matches_solo_runs(tiny_engine, alone, lookahead):
    # 19 usable blocks of 8 tokens hold ~3 of these requests (48 tokens on average) at once: the
    # workload is ~12 times the pool, all submitted at once
    engine = _engine(tiny_engine, num_blocks=20, admission_lookahead=lookahead)
    work = _random_lengths_workload()
    requests = [engine.add_request(p, SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)) for p, n in work]
    while engine.has_unfinished_requests():
        engine.step()
    assert [r.output_token_ids for r in requests] == alone
    stats = engine.stats
    assert stats.computed_tokens_total == _useful_positions(requests) + stats.recomputed_tokens_total
    if lookahead is None:
        assert stats.recomputed_fraction < 0.05
    else:  # the workload does thrash without the forecast: the test above is not vacuous
        assert stats.recomputed_fraction > 0.05
