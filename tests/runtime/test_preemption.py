"""Preemption through the real engine: the computed / recomputed token counters are exact."""

from __future__ import annotations

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
    # 19 usable blocks of 8 tokens: two requests of 40 + 60 tokens (13 blocks each) cannot both finish
    engine = _engine(tiny_engine, num_blocks=20)
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
