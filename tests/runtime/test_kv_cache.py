"""Block bookkeeping: allocation, reuse after free, and the scheduler's use of blocks."""

from __future__ import annotations

import pytest

from ingot.errors import ConfigError
from ingot.config import SchedulerConfig
from ingot.runtime.kv_cache import NULL_BLOCK, BlockPool, blocks_needed
from ingot.runtime.kv_manager import KVCacheManager
from ingot.runtime.request import Request
from ingot.runtime.scheduler import Scheduler
from ingot.sampling_params import SamplingParams


def test_blocks_are_unique_never_the_null_block_and_reused_after_free():
    allocator = BlockPool(9)
    first = allocator.allocate(5)
    assert NULL_BLOCK not in first and len(set(first)) == 5 and allocator.num_free == 3
    with pytest.raises(RuntimeError, match="asked for 4 KV blocks with 3 free"):
        allocator.allocate(4)
    allocator.free(first)
    assert allocator.num_free == 8
    again = allocator.allocate(8)
    assert set(first) <= set(again)


def test_reference_counts_and_double_free():
    allocator = BlockPool(4)
    (block,) = allocator.allocate(1)
    allocator.touch(block)
    allocator.free([block])
    assert allocator.num_free == 2, "still referenced once"
    allocator.free([block])
    assert allocator.num_free == 3
    with pytest.raises(AssertionError, match="double free"):
        allocator.free([block])


def test_too_small_pool_is_a_clear_error():
    with pytest.raises(ConfigError, match="num_blocks=1 is too small"):
        BlockPool(1)


@pytest.mark.parametrize("tokens,expected", [(1, 1), (8, 1), (9, 2), (16, 2), (17, 3)])
def test_blocks_needed(tokens, expected):
    assert blocks_needed(tokens, 8) == expected


def _scheduler(pool: BlockPool, max_num_tokens: int, lookahead: int | None = None) -> Scheduler:
    kv = KVCacheManager(pool, tokens_per_block=4, enable_prefix_caching=False)
    config = SchedulerConfig(max_batch_size=4, max_num_tokens=max_num_tokens, admission_lookahead=lookahead)
    return Scheduler(kv, config, max_seq_len=256)


def _request(rid: str, prompt_len: int) -> Request:
    return Request(rid, list(range(prompt_len)), SamplingParams(max_tokens=50))


def test_scheduler_grows_block_tables_across_boundaries_and_frees_them():
    allocator = BlockPool(32)
    scheduler = _scheduler(allocator, 64)
    a, b = _request("a", 7), _request("b", 4)
    scheduler.add(a), scheduler.add(b)
    batch = scheduler.schedule()
    assert _counts(batch) == [7, 4] and len(a.block_ids) == 2 and len(b.block_ids) == 1
    assert [s.start for s in batch.scheduled] == [0, 0] and a.num_computed_tokens == 7, "advanced when scheduled"
    for step in range(6):  # decode: one token each, crossing block boundaries
        for request in batch.requests:
            request.append_token(0)
        batch = scheduler.schedule()
        assert _counts(batch) == [1, 1]
    assert len(a.block_ids) == blocks_needed(a.num_computed_tokens + 1, 4)
    assert len(b.block_ids) == blocks_needed(b.num_computed_tokens + 1, 4)
    assert not set(a.block_ids) & set(b.block_ids)
    scheduler.finish(a), scheduler.finish(b)
    assert allocator.num_free == 31


def test_chunked_prefill_respects_the_token_budget():
    allocator = BlockPool(64)
    scheduler = _scheduler(allocator, 10)
    long, short = _request("long", 25), _request("short", 3)
    scheduler.add(long), scheduler.add(short)
    chunks = []
    while long.num_computed_tokens < long.num_tokens:
        batch = scheduler.schedule()
        assert batch.total_tokens <= 10
        chunks.append(_counts(batch)[0])
    assert chunks == [10, 10, 5]
    assert short.num_computed_tokens == 3, "the short prompt joined in the last chunk's spare budget"


def test_preemption_frees_blocks_and_requeues_the_newest_of_equals():
    allocator = BlockPool(5)  # 4 usable blocks of 4 tokens
    scheduler = _scheduler(allocator, 64, lookahead=0)  # admit whatever fits now
    a, b = _request("a", 8), _request("b", 8)
    scheduler.add(a), scheduler.add(b)
    batch = scheduler.schedule()
    for request in batch.requests:
        request.append_token(0)
    batch = scheduler.schedule()  # a needs a third block: none free, so b is preempted
    assert batch.requests == [a] and batch.preempted == [b]
    assert b.block_ids == [] and b.num_computed_tokens == 0 and scheduler.waiting[0] is b
    scheduler.finish(a)
    (again,) = scheduler.schedule().scheduled  # b comes back: its 9 tokens, the 8 it had computed again
    assert again.request is b and (again.num_tokens, again.num_recomputed) == (9, 8)


def test_the_victim_is_the_request_with_the_fewest_computed_tokens_not_the_newest():
    scheduler = _scheduler(BlockPool(6), 64, lookahead=0)  # 5 usable blocks of 4 tokens
    a, b, c = _request("a", 8), _request("b", 2), _request("c", 6)  # 2 + 1 + 2 blocks
    for request in (a, b, c):
        scheduler.add(request)
    batch = scheduler.schedule()
    for request in batch.requests:
        request.append_token(0)
    batch = scheduler.schedule()  # a needs a third block; b has computed the least, c is the newest
    assert batch.preempted == [b] and batch.requests == [a, c]


def _counts(batch) -> list[int]:
    return [s.num_tokens for s in batch.scheduled]


# Python's hash() maps -1 and -2 to the same value, and ints equal modulo 2**61 - 1 alike, so
# tuples of them hash alike: the old `hash((parent, tokens))` keys would collide.
HASH_TWINS = [([7, 8, -1, 9], [7, 8, -2, 9]), ([1, 2, 3, 4], [1, 2 + (2**61 - 1), 3, 4])]


@pytest.mark.parametrize("first, second", HASH_TWINS)
def test_sha256_block_keys_separate_what_python_hash_confuses(first, second):
    from ingot.runtime.kv_cache import chain_keys

    assert hash((None, tuple(first))) == hash((None, tuple(second))), "the precondition: Python's hash collides"
    (key_a,), (key_b,) = chain_keys(first, 4, []), chain_keys(second, 4, [])
    assert key_a != key_b and len(key_a) == 32
    pool = BlockPool(8)
    kv = KVCacheManager(pool, tokens_per_block=4, enable_prefix_caching=True)
    owner = Request("a", first + [0], SamplingParams(max_tokens=1))
    assert kv.allocate(owner, 5)
    owner.num_computed_tokens = 5
    kv.publish_accepted(owner)
    assert kv.find_cached_prefix(Request("c", first + [0], SamplingParams())) == [owner.block_ids[0]]
    assert kv.find_cached_prefix(Request("b", second + [0], SamplingParams())) == [], "no hit for other tokens"


def test_block_keys_chain_the_parent_and_take_extra_keys():
    from ingot.runtime.kv_cache import chain_keys, root_key

    tokens = list(range(8))
    keys = chain_keys(tokens, 4, [])
    assert chain_keys(tokens[4:], 4, []) != keys[1:], "a block's key depends on everything before it"
    assert chain_keys(tokens, 4, [], root=root_key("adapter-7")) != keys, "an extra key (adapter id) separates caches"
    assert chain_keys(tokens, 4, [], root=root_key("adapter-7")) == chain_keys(tokens, 4, [], root=root_key("adapter-7"))


def test_every_capacity_policy_name_the_config_accepts_is_a_policy_class():
    from ingot import config
    from ingot.runtime import policies

    assert set(config.CAPACITY_POLICIES) == set(policies.CAPACITY_POLICIES)
    assert all(issubclass(cls, policies.CapacityPolicy) for cls in policies.CAPACITY_POLICIES.values())
