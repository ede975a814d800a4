"""Prompt lookup (n-gram) drafting: if the last n tokens occurred before in the request's prompt or
output, guess that what followed them then follows now.

    tokens   ... a b c d e ... a b c | ?          last n = 3 tokens "a b c" seen before
    drafts                           d e ...      the up to K tokens that followed them

The longest suffix wins (n from ngram_max down to ngram_min), and of its earlier occurrences the
most recent one. Editing code, summarising or answering from a document repeat long runs of the
prompt, which is where this pays; it costs no model. Each request keeps an index from every n-gram
to the latest position after which it was followed by a token, updated with the tokens that came
since the last proposal (O(new tokens) per step).

When a request's own tokens have no match, the runtime cache is searched: the indexes of the last
`cache_sequences` requests that finished (prompt and output), newest first, so a request that
resembles an earlier one (the same template, a retried edit) drafts what that one produced. Drafts
are only guesses the target verifies, so a cached sequence never changes an output.
"""

from __future__ import annotations

from collections import OrderedDict

from ingot.runtime.request import Request
from ingot.speculative.base import Proposer


class NgramIndex:
    def __init__(self, ngram_min: int, ngram_max: int) -> None:
        self.sizes = range(ngram_min, ngram_max + 1)
        self.latest: dict[tuple[int, ...], int] = {}  # n-gram -> end position of its latest followed occurrence
        self.indexed = 0  # tokens[:indexed] are indexed (as n-gram ends)

    def update(self, tokens: list[int]) -> None:
        """Index every n-gram that ends before the last token (so each has a follower)."""
        for end in range(max(self.indexed, 1), len(tokens)):
            for n in self.sizes:
                if end >= n:
                    self.latest[tuple(tokens[end - n:end])] = end
        self.indexed = max(len(tokens), self.indexed)

    def lookup(self, tokens: list[int], count: int) -> list[int]:
        for n in reversed(self.sizes):
            end = self.latest.get(tuple(tokens[-n:])) if len(tokens) > n else None
            if end is not None:
                return tokens[end:end + count]
        return []


class NgramProposer(Proposer):
    name = "ngram"

    def __init__(self, max_draft_len: int, ngram_min: int = 2, ngram_max: int = 4, cache_sequences: int = 64) -> None:
        super().__init__(max_draft_len)
        self.ngram_min, self.ngram_max = ngram_min, ngram_max
        self.indexes: dict[str, NgramIndex] = {}
        self.cache_sequences = cache_sequences
        self.finished: OrderedDict[str, tuple[list[int], NgramIndex]] = OrderedDict()  # oldest first

    def propose(self, request: Request) -> list[int]:
        index = self.indexes.get(request.request_id)
        if index is None or index.indexed > request.num_tokens:  # new, or its tokens were rewritten
            index = self.indexes[request.request_id] = NgramIndex(self.ngram_min, self.ngram_max)
        tokens = request.token_ids
        index.update(tokens)
        return index.lookup(tokens, self.max_draft_len) or self._from_cache(tokens)

    def _from_cache(self, tokens: list[int]) -> list[int]:
        """The continuation of the request's suffix in the newest finished sequence that contains it."""
        for n in range(min(self.ngram_max, len(tokens) - 1), self.ngram_min - 1, -1):
            suffix = tuple(tokens[-n:])
            for cached, index in reversed(self.finished.values()):
                end = index.latest.get(suffix)
                if end is not None:
                    return cached[end:end + self.max_draft_len]
        return []

    def forget(self, request: Request) -> None:
        """Keep the finished request's index for the runtime cache (bounded: the oldest goes)."""
        index = self.indexes.pop(request.request_id, None)
        if index is None or self.cache_sequences == 0:
            return
        tokens = list(request.token_ids)
        index.update(tokens)
        self.finished[request.request_id] = (tokens, index)
        while len(self.finished) > self.cache_sequences:
            self.finished.popitem(last=False)
