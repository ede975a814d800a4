"""Property test: after any sequence of add / propose drafts / step (accept k of n drafts, rewind
the rest) / finish / abort / preempt, every block is either free or held, reference counts equal
the number of holders, nothing is double-freed, the prefix-cache index points only at blocks
that hold what it says, and a published block never holds a rejected (rewound) token."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from ingot.config import SchedulerConfig
from ingot.runtime.kv_cache import BlockPool, blocks_needed, chain_keys
from ingot.runtime.kv_manager import KVCacheManager
from ingot.runtime.request import Request
from ingot.runtime.scheduler import Scheduler
from ingot.sampling_params import SamplingParams

TOKENS_PER_BLOCK = 4
MAX_SEQ_LEN = 24

operation = st.one_of(
    st.tuples(st.just("add"), st.lists(st.integers(0, 3), min_size=1, max_size=14), st.integers(1, 10)),
    st.tuples(st.just("step"), st.integers(0, 2**16)),
    st.tuples(st.just("propose"), st.integers(0, 2**16)),
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
    for request in scheduler.running:
        assert len(request.block_ids) == blocks_needed(request.num_computed_tokens, TOKENS_PER_BLOCK), \
            "a request holds the blocks of its computed tokens, no more (rejected drafts are released)"
        _check_published(pool, request)


def _check_published(pool: BlockPool, request: Request) -> None:
    """The request's published blocks are full of computed, accepted tokens and keyed by them."""
    published = request.num_registered_blocks
    assert published * TOKENS_PER_BLOCK <= min(request.num_computed_tokens, request.num_tokens)
    keys = chain_keys(request.token_ids, TOKENS_PER_BLOCK, [], limit=published)
    for index in range(published):
        block = request.block_ids[index]
        if block in pool.key_of:  # first writer wins: another request may have published equal tokens
            assert pool.key_of[block] == keys[index], "a published block is keyed by its accepted tokens"


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(operation, max_size=60), policy=st.sampled_from(["max_utilization", "guaranteed_no_evict"]),
       prefix=st.booleans(), num_blocks=st.integers(6, 14), lookahead=st.sampled_from([None, 0, 3]))
def test_no_leaks(ops, policy, prefix, num_blocks, lookahead):
    pool = BlockPool(num_blocks)
    kv = KVCacheManager(pool, TOKENS_PER_BLOCK, enable_prefix_caching=prefix)
    config = SchedulerConfig(policy, max_batch_size=3, max_num_tokens=9, admission_lookahead=lookahead)
    scheduler = Scheduler(kv, config, max_seq_len=MAX_SEQ_LEN)
    live: list[Request] = []
    counts = Counter()
    for count, op in enumerate(ops):
        if op[0] == "add":
            _, prompt, max_tokens = op
            request = Request(f"r{count}", prompt, SamplingParams(max_tokens=min(max_tokens, MAX_SEQ_LEN - len(prompt))))
            scheduler.add(request)
            live.append(request)
        elif op[0] == "abort" and live:
            scheduler.finish(live.pop(op[1] % len(live)))
        elif op[0] == "propose":
            _propose(scheduler, random.Random(op[1]))
        elif op[0] == "step":
            counts += _fake_step(scheduler, kv, live, random.Random(op[1]))
        _check_invariants(pool, scheduler)
    for request in live:
        scheduler.finish(request)
    _check_invariants(pool, scheduler)
    assert pool.num_free == pool.num_usable, "everything returns to the pool"


def test_the_property_test_exercises_rewinds_and_preemption():
    """The strategies above do reach the interesting paths (a guard against a vacuous property)."""
    rng = random.Random(7)
    pool = BlockPool(8)
    kv = KVCacheManager(pool, TOKENS_PER_BLOCK, enable_prefix_caching=True)
    config = SchedulerConfig("max_utilization", max_batch_size=3, max_num_tokens=9, admission_lookahead=0)
    scheduler = Scheduler(kv, config, max_seq_len=MAX_SEQ_LEN)
    live, counts = [], Counter()
    for i in range(6):
        request = Request(f"r{i}", [rng.randrange(4) for _ in range(rng.randint(3, 9))], SamplingParams(max_tokens=12))
        scheduler.add(request)
        live.append(request)
    for _ in range(60):
        _propose(scheduler, rng)
        counts += _fake_step(scheduler, kv, live, rng)
        _check_invariants(pool, scheduler)
    assert counts["rejected"] > 0 and counts["accepted"] > 0 and scheduler.counters.preempted_total > 0


def _propose(scheduler: Scheduler, rng: random.Random) -> None:
    """A proposer: random draft tokens for the running requests that are decoding."""
    for request in scheduler.running:
        if request.num_computed_tokens == request.num_tokens - 1:
            request.draft_tokens = [rng.randrange(4) for _ in range(rng.randint(0, 4))]


def _fake_step(scheduler: Scheduler, kv: KVCacheManager, live: list[Request], rng: random.Random) -> Counter:
    """What the engine does around the model: accept k of a request's n drafts plus one sampled
    token, rewind the rest, publish, finish."""
    counts = Counter()
    batch = scheduler.schedule()
    if scheduler.config.capacity_policy == "guaranteed_no_evict":
        assert not batch.preempted
    for scheduled in batch.scheduled:
        request = scheduled.request
        if not scheduled.samples:
            kv.publish_accepted(request)
            continue
        accepted = rng.randint(0, len(scheduled.draft_tokens))
        kv.rewind(request, len(scheduled.draft_tokens) - accepted)
        counts.update(accepted=accepted, rejected=len(scheduled.draft_tokens) - accepted)
        for token in [*scheduled.draft_tokens[:accepted], rng.randrange(4)]:
            request.append_token(token)
            if request.num_output_tokens >= request.params.max_tokens:
                break
        kv.publish_accepted(request)
        if request.num_output_tokens >= request.params.max_tokens:
            scheduler.finish(request)
            live.remove(request)
    return counts
