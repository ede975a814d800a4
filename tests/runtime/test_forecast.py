"""The admission forecast of max_utilization: the peak of the blocks the running requests will hold
(exact against a step-by-step count), the learned share of max_tokens, and admission by both."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingot.config import SchedulerConfig
from ingot.runtime.forecast import MIN_SEEN, OutputShare, peak_blocks, steps_left
from ingot.runtime.kv_cache import BlockPool, blocks_needed
from ingot.runtime.kv_manager import KVCacheManager
from ingot.runtime.request import Request
from ingot.runtime.scheduler import Scheduler
from ingot.sampling_params import SamplingParams

MAX_SEQ_LEN = 200


def _request(prompt_len: int, max_tokens: int, emitted: int = 0, rid: str = "r") -> Request:
    request = Request(rid, list(range(prompt_len)), SamplingParams(max_tokens=max_tokens))
    for _ in range(emitted):
        request.append_token(0)
    return request


def _counted_peak(requests, share, horizon, bs):
    """Step by step: s steps on, a request still running holds ceil((n + s) / bs) blocks."""
    ends = [min(steps_left(r, share, MAX_SEQ_LEN), horizon) for r in requests]
    return max(sum(blocks_needed(r.num_tokens + s, bs) for r, end in zip(requests, ends) if s <= end)
               for s in range(0, max([0, *ends]) + 1))


@settings(max_examples=300, deadline=None)
@given(shapes=st.lists(st.tuples(st.integers(1, 60), st.integers(1, 80), st.integers(0, 90)), max_size=12),
       share=st.sampled_from([1.0, 0.5, 0.1]), horizon=st.sampled_from([0, 1, 7, MAX_SEQ_LEN]),
       bs=st.sampled_from([1, 4, 16]))
def test_peak_blocks_is_the_step_by_step_peak(shapes, share, horizon, bs):
    requests = [_request(p, m, min(e, m - 1)) for p, m, e in shapes]
    assert peak_blocks(requests, share, horizon, bs, MAX_SEQ_LEN) == _counted_peak(requests, share, horizon, bs)


def test_a_finish_frees_blocks_for_the_others_growth():
    # a (12 tokens, 3 blocks of 4) finishes with this step; b (4 tokens, 1 block) grows to 4 blocks
    # after it: together they never hold more than 4 blocks, though their own peaks sum to 7
    a, b = _request(10, 3, emitted=2), _request(4, 13)
    assert steps_left(a, 1.0, MAX_SEQ_LEN) == 0 and steps_left(b, 1.0, MAX_SEQ_LEN) == 12
    assert peak_blocks([a, b], 1.0, MAX_SEQ_LEN, 4, MAX_SEQ_LEN) == 4
    assert peak_blocks([a], 1.0, MAX_SEQ_LEN, 4, MAX_SEQ_LEN) + peak_blocks([b], 1.0, MAX_SEQ_LEN, 4, MAX_SEQ_LEN) == 7


def test_expected_length_comes_from_the_learned_share_and_an_outlier_runs_to_max_tokens():
    assert steps_left(_request(10, 40), 0.25, MAX_SEQ_LEN) == 10 + 10 - 1 - 10
    assert steps_left(_request(10, 40, emitted=12), 0.25, MAX_SEQ_LEN) == 40 - 12 - 1, "past 10 tokens: assume 40"
    assert steps_left(_request(190, 40), 1.0, MAX_SEQ_LEN) == 9, "max_seq_len cuts max_tokens"


def test_the_share_is_trusted_at_one_until_enough_requests_finished():
    share = OutputShare()
    for _ in range(MIN_SEEN - 1):
        share.observe(5, 100)
        share.observe(0, 0)  # a request that only scored its prompt: not counted
    assert share.value == 1.0
    share.observe(5, 100)
    assert share.value == 0.05
    rng = random.Random(0)
    for _ in range(500):
        share.observe(rng.randint(1, 100), 100)
    assert 0.8 < share.value < 0.97, "about the 90th percentile of the last 128"


def _scheduler(num_blocks: int) -> Scheduler:
    kv = KVCacheManager(BlockPool(num_blocks), tokens_per_block=4, enable_prefix_caching=False)
    return Scheduler(kv, SchedulerConfig(max_batch_size=16, max_num_tokens=256), max_seq_len=MAX_SEQ_LEN)


def _admitted_at_once(scheduler: Scheduler, num: int) -> int:
    for i in range(num):
        scheduler.add(_request(8, 40, rid=f"w{i}"))
    return len(scheduler.schedule().scheduled)


def test_requests_seen_to_stop_early_let_more_in_and_aborts_teach_nothing():
    # each request: 8 prompt tokens, up to 40 more; 12 blocks of 4 a request at most, 3 at first
    trusting = _scheduler(49)
    assert _admitted_at_once(trusting, 8) == 4, "48 blocks hold 4 requests of 12 blocks"
    learned = _scheduler(49)
    for i in range(MIN_SEEN):
        done = _request(8, 40, emitted=4, rid=f"done{i}")  # each stopped at a tenth of max_tokens
        done.finish_reason = "stop"
        learned.finish(done)
        aborted = _request(8, 40, emitted=40, rid=f"aborted{i}")
        aborted.finish_reason = "abort"
        learned.finish(aborted)
    assert learned.capacity.share.value == 0.1
    assert _admitted_at_once(learned, 8) == 8, "each expected to hold 3 blocks"


@pytest.mark.parametrize("lookahead, admitted", [(None, 1), (0, 2)])
def test_admission_lookahead_caps_the_forecast(lookahead, admitted):
    kv = KVCacheManager(BlockPool(13), tokens_per_block=4, enable_prefix_caching=False)
    config = SchedulerConfig(max_batch_size=4, max_num_tokens=64, admission_lookahead=lookahead)
    scheduler = Scheduler(kv, config, max_seq_len=MAX_SEQ_LEN)
    scheduler.add(_request(8, 40, rid="a")), scheduler.add(_request(8, 40, rid="b"))
    assert len(scheduler.schedule().scheduled) == admitted, "a alone may grow to 12 of the 12 blocks"
