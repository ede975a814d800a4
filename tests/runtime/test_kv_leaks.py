"""Property test: after any sequence of add / step / finish / abort / preempt, every block is
either free or held, reference counts equal the number of holders, nothing is double-freed,
and the prefix-cache index points only at blocks that hold what it says."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from ingot.config import SchedulerConfig
from ingot.runtime.kv_cache import BlockPool
from ingot.runtime.kv_manager import KVCacheManager
from ingot.runtime.request import Request
from ingot.runtime.scheduler import Scheduler
from ingot.sampling_params import SamplingParams

TOKENS_PER_BLOCK = 4

operation = st.one_of(
    st.tuples(st.just("add"), st.lists(st.integers(0, 3), min_size=1, max_size=14), st.integers(1, 10)),
    st.tuples(st.just("step"), st.integers(0, 2**16)),
    st.tuples(st.just("abort"), st.integers(0, 50)),
)


def _check_invariants(pool: BlockPool, scheduler: Scheduler) -> None:
    holders = Counter(block for request in scheduler.running for block in request.block_ids)
    for request in scheduler.waiting:
        assert request.block_ids == [], "waiting requests hold no blocks"
    free = set(pool._free)
    assert len(free) == pool.num_free
    for block in range(1, pool.num_blocks):
        assert pool.ref_counts[block] == holders[block], f"block {block}: ref count vs holders"
        assert (block in free) == (holders[block] == 0), f"block {block}: free iff unreferenced"
    assert 0 not in free and pool.ref_counts[0] == 0, "the null block is never handed out"
    for key, block in pool.block_of.items():
        assert pool.key_of[block] == key
    assert pool.num_cached_free == sum(1 for block in pool.key_of if pool.ref_counts[block] == 0)
    assert len(pool.block_of) == len(pool.key_of)


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(operation, max_size=60), policy=st.sampled_from(["max_utilization", "guaranteed_no_evict"]),
       prefix=st.booleans(), num_blocks=st.integers(6, 14))
def test_no_leaks(ops, policy, prefix, num_blocks):
    pool = BlockPool(num_blocks)
    kv = KVCacheManager(pool, TOKENS_PER_BLOCK, enable_prefix_caching=prefix)
    scheduler = Scheduler(kv, SchedulerConfig(policy, max_batch_size=3, max_num_tokens=9), max_seq_len=20)
    live: list[Request] = []
    for count, op in enumerate(ops):
        if op[0] == "add":
            _, prompt, max_tokens = op
            request = Request(f"r{count}", prompt, SamplingParams(max_tokens=min(max_tokens, 20 - len(prompt))))
            scheduler.add(request)
            live.append(request)
        elif op[0] == "abort" and live:
            scheduler.finish(live.pop(op[1] % len(live)))
        elif op[0] == "step":
            _fake_step(scheduler, kv, live, op[1])
        _check_invariants(pool, scheduler)
    for request in live:
        scheduler.finish(request)
    _check_invariants(pool, scheduler)
    assert pool.num_free == pool.num_usable, "everything returns to the pool"


def _fake_step(scheduler: Scheduler, kv: KVCacheManager, live: list[Request], token: int) -> None:
    """What the engine does around the model: mark tokens computed, append a sampled token, finish."""
    batch = scheduler.schedule()
    if scheduler.config.capacity_policy == "guaranteed_no_evict":
        assert not batch.preempted
    for request, num in zip(batch.requests, batch.num_new_tokens):
        request.num_computed_tokens += num
        kv.register_computed(request)
        if request.num_computed_tokens == request.num_tokens:
            request.append_token(token % 4)
            if request.num_output_tokens >= request.params.max_tokens:
                scheduler.finish(request)
                live.remove(request)
