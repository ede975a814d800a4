"""The scheduler's two policies, as small classes (TensorRT-LLM's names).

capacity policy: who may hold KV blocks.
    GuaranteedNoEvict  admit a request only if blocks for its whole possible length (prompt +
                       max_tokens) are guaranteed beside what running requests were promised;
                       nothing is ever preempted.
    MaxUtilization     admit greedily; when blocks run out, preempt the most recently admitted
                       request (its KV is dropped and recomputed later).

batch policy: how many tokens each request computes this step.
    TokenBudget        at most max_batch_size sequences and max_num_tokens tokens per step;
                       running requests first, oldest first (so a long prompt is chunked and never
                       stalls running decodes), then waiting ones in arrival order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from ingot.runtime.kv_cache import blocks_needed
from ingot.runtime.kv_manager import KVCacheManager
from ingot.runtime.request import Request


class CapacityPolicy(ABC):
    name: str = "base"

    def __init__(self, kv: KVCacheManager, max_seq_len: int) -> None:
        self.kv, self.max_seq_len = kv, max_seq_len

    @abstractmethod
    def admits(self, request: Request, cached: list[int], running: list[Request]) -> bool:
        """May `request` start now, adopting the `cached` prefix blocks?"""

    def victim(self, running: list[Request]) -> Request:
        """Whom to preempt when a running request needs blocks and none are free: the newest."""
        return running[-1]


class MaxUtilization(CapacityPolicy):
    name = "max_utilization"

    def admits(self, request: Request, cached: list[int], running: list[Request]) -> bool:
        return True


class GuaranteedNoEvict(CapacityPolicy):
    name = "guaranteed_no_evict"

    def admits(self, request: Request, cached: list[int], running: list[Request]) -> bool:
        promised = sum(self._max_blocks(r) - len(r.block_ids) for r in running)
        wanted = self._max_blocks(request) - len(request.block_ids) - len(cached)
        return wanted <= self.kv.free_after_adopting(cached) - promised

    def _max_blocks(self, request: Request) -> int:
        longest = min(request.num_prompt_tokens + request.params.max_tokens, self.max_seq_len)
        return blocks_needed(longest, self.kv.tokens_per_block)


CAPACITY_POLICIES: dict[str, type[CapacityPolicy]] = {p.name: p for p in (MaxUtilization, GuaranteedNoEvict)}


class TokenBudget:
    """One step's budget: tokens left, and how many sequences may run."""

    def __init__(self, max_num_tokens: int, max_batch_size: int) -> None:
        self.tokens_left = max_num_tokens
        self.max_batch_size = max_batch_size

    def grant(self, wanted: int) -> int:
        """Tokens a request gets of the `wanted` it is owed (a prompt is chunked to what is left)."""
        return min(wanted, self.tokens_left)

    def take(self, num: int) -> None:
        self.tokens_left -= num

    @property
    def exhausted(self) -> bool:
        return self.tokens_left == 0

    def has_room_for_another(self, num_running: int) -> bool:
        return not self.exhausted and num_running < self.max_batch_size
