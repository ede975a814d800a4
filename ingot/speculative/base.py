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
