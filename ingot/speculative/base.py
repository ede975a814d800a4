"""The proposer contract: before each step, suggest draft tokens for the requests that decode.

A proposer sets `request.draft_tokens` (at most max_draft_len ids continuing request.token_ids)
for requests that are decoding — their prompt computed, one token owed; the scheduler takes the
drafts that fit the step (ingot/runtime/scheduler.py) and the runner verifies them
(ingot/speculative/verify.py). A proposer never changes what the target outputs, only how many
tokens a step may accept.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from ingot.runtime.request import Request


class Proposer(ABC):
    name: str = "base"

    def __init__(self, max_draft_len: int) -> None:
        self.max_draft_len = max_draft_len

    @abstractmethod
    def propose(self, request: Request) -> list[int]:
        """Up to max_draft_len tokens the request's next tokens may be (empty: no guess)."""

    def propose_for(self, requests: list[Request]) -> None:
        for request in requests:
            if request.params.speculative and request.num_computed_tokens == request.num_tokens - 1:
                request.draft_tokens = self.propose(request)

    def forget(self, request: Request) -> None:
        """The request left (finished or aborted): drop what was kept for it."""
        return None

    def shutdown(self) -> None:
        """The engine shuts down: release what the proposer holds (a draft engine's workers)."""
        return None


def fill_drafts(requests: list[Request], length: int) -> None:
    """Make a step of drafting requests one that a captured CUDA graph can replay.

    Graphs are captured for steps of 1 + max_draft_len tokens per sequence; a step whose sequences
    carry different numbers of drafts runs eagerly, several times slower (Llama-3.1-8B shape on an
    H200, batch 1: 16-25 ms against 5 ms for a graph replay), while the graph's 6 tokens cost what
    1 token costs (0.99x measured: the step is bound by reading the weights). So when every running
    request decodes and one of them drafted, each is filled up to `length` drafts by repeating its
    last token: a filler draft is verified like any other (accepted only if the target agrees), so
    the output is unchanged."""
    if not requests or not all(r.num_computed_tokens == r.num_tokens - 1 for r in requests):
        return
    if not any(r.draft_tokens for r in requests):
        return
    for request in requests:
        filler = (request.draft_tokens or request.token_ids)[-1]
        request.draft_tokens = request.draft_tokens + [filler] * (length - len(request.draft_tokens))
