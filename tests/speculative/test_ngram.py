"""Prompt-lookup drafting: the longest matching suffix, its latest earlier occurrence, updated
incrementally as tokens arrive."""

from __future__ import annotations

from ingot.runtime.request import Request
from ingot.sampling_params import SamplingParams
from ingot.speculative.ngram import NgramIndex, NgramProposer


def test_longest_suffix_and_latest_occurrence_win():
    index = NgramIndex(2, 4)
    tokens = [1, 2, 3, 9, 9, 1, 2, 3, 4, 5, 7, 2, 3]
    index.update(tokens)
    # suffix (2, 3) last seen followed by 4; (7, 2, 3) and longer were never seen before
    assert index.lookup(tokens, 3) == [4, 5, 7]
    tokens += [4]
    index.update(tokens)
    assert index.lookup(tokens, 2) == [5, 7], "the 4-gram (1, 2, 3, 4) ... (7, 2, 3, 4) -> (2, 3, 4) latest"
    assert NgramIndex(2, 4).lookup([5, 6], 3) == [], "nothing before: no draft"


def test_the_proposer_drafts_for_decoding_requests_only_and_forgets():
    proposer = NgramProposer(max_draft_len=3)
    decoding = Request("a", [10, 11, 12, 13, 10, 11], SamplingParams())
    decoding.num_computed_tokens = decoding.num_tokens - 1
    prefilling = Request("b", [10, 11, 12, 10, 11], SamplingParams())
    opted_out = Request("c", [10, 11, 12, 10, 11], SamplingParams(speculative=False))
    opted_out.num_computed_tokens = opted_out.num_tokens - 1
    proposer.propose_for([decoding, prefilling, opted_out])
    assert decoding.draft_tokens == [12, 13, 10] and prefilling.draft_tokens == [] and opted_out.draft_tokens == []
    decoding.append_token(12)
    decoding.num_computed_tokens += 1
    proposer.propose_for([decoding])
    assert decoding.draft_tokens == [13, 10, 11], "indexed incrementally"
    proposer.forget(decoding)
    assert "a" not in proposer.indexes


def test_the_runtime_cache_drafts_what_an_earlier_request_produced():
    proposer = NgramProposer(max_draft_len=3, cache_sequences=2)
    first = Request("a", [1, 2, 3], SamplingParams())
    proposer.propose(first)
    for token in (4, 5, 6, 7):
        first.append_token(token)
    proposer.forget(first)  # finished: its prompt and output go to the cache
    second = Request("b", [9, 3, 4], SamplingParams())
    assert proposer.propose(second) == [5, 6, 7], "own tokens have no match; the cache does"
    third = Request("c", [9, 9, 9, 9, 3, 4], SamplingParams())
    assert proposer.propose(third) == [5, 6, 7]
    for name in ("d", "e"):  # two newer sequences push the first out of a cache of two
        proposer.propose(Request(name, [20, 21], SamplingParams()))
        proposer.forget(Request(name, [20, 21], SamplingParams()))
    assert proposer.propose(Request("f", [3, 4], SamplingParams())) == []
    proposer.forget(Request("never-proposed", [3, 4, 5], SamplingParams()))
    assert list(proposer.finished) == ["d", "e"], "only requests the proposer saw are cached"


def _decoding(request_id: str, tokens: list[int], drafts: list[int]) -> Request:
    request = Request(request_id, tokens, SamplingParams())
    request.num_computed_tokens = request.num_tokens - 1
    request.draft_tokens = list(drafts)
    return request


def test_drafts_are_filled_to_the_graph_length_only_in_pure_decode_steps_that_draft():
    from ingot.speculative.base import fill_drafts

    a, b = _decoding("a", [1, 2, 3], [4, 5]), _decoding("b", [7, 8], [])
    fill_drafts([a, b], 4)
    assert a.draft_tokens == [4, 5, 5, 5] and b.draft_tokens == [8, 8, 8, 8]
    c, d = _decoding("c", [1, 2], []), _decoding("d", [3, 4], [])
    fill_drafts([c, d], 4)
    assert c.draft_tokens == [] and d.draft_tokens == [], "nobody drafted: a plain decode step"
    e, prefilling = _decoding("e", [1, 2], [9]), Request("f", [5, 6, 7], SamplingParams())
    fill_drafts([e, prefilling], 4)
    assert e.draft_tokens == [9], "a step with a prompt in it runs eagerly: filling would only cost"
