"""The scheduler hands out tokens per request; there is no prefill phase and no decode phase.

Each step every admitted request is owed `num_tokens - num_computed_tokens` tokens: the rest of
its prompt (a chunk of it, when the step's token budget is short) or one decode token. Two
small policies compose:

  batch policy     at most max_batch_size sequences and max_num_tokens tokens per step; running
                   requests are served first, oldest first, so a long prompt (chunked) never
                   stalls running decodes.
  capacity policy  who may hold KV blocks:
      guaranteed_no_evict  admit a request only if blocks for its whole possible length
                           (prompt + max_tokens) are guaranteed; nothing is ever preempted.
      max_utilization      admit greedily; when blocks run out, preempt the most recently
                           admitted request (its KV is dropped and recomputed later).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from ingot.config import SchedulerConfig
from ingot.runtime.kv_cache import blocks_needed
from ingot.runtime.kv_manager import KVCacheManager
from ingot.runtime.request import Request, RequestStatus


@dataclass
class ScheduledBatch:
    requests: list[Request] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)  # tokens computed for each request this step
    preempted: list[Request] = field(default_factory=list)

    @property
    def total_tokens(self) -> int:
        return sum(self.num_new_tokens)

    def add(self, request: Request, num: int) -> None:
        self.requests.append(request)
        self.num_new_tokens.append(num)


@dataclass
class SchedulerCounters:
    preempted_total: int = 0
    prefix_queries: int = 0  # tokens of admitted requests looked up in the prefix cache
    prefix_hits: int = 0  # of which were found cached


class Scheduler:
    def __init__(self, kv: KVCacheManager, config: SchedulerConfig, max_seq_len: int) -> None:
        self.kv = kv
        self.config = config
        self.max_seq_len = max_seq_len
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # in admission order
        self.counters = SchedulerCounters()

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self.config.max_num_tokens
        for request in list(self.running):
            if budget == 0:
                break
            if request.status is not RequestStatus.RUNNING:
                continue  # preempted earlier in this loop
            num = min(request.num_tokens - request.num_computed_tokens, budget)
            if self._allocate_or_preempt(request, num, batch):
                batch.add(request, num)
                budget -= num
        if not batch.preempted:  # memory is short: admitting now would only preempt again
            self._admit_waiting(batch, budget)
        return batch

    # ---- admission ----

    def _admit_waiting(self, batch: ScheduledBatch, budget: int) -> None:
        for request in list(self.waiting):
            if budget == 0 or len(self.running) >= self.config.max_batch_size:
                return
            if self._waits_for_shared_prompt(request):
                continue  # an n > 1 sample: admitted once its sibling's prompt blocks are cached
            cached = self.kv.find_cached_prefix(request) if request.num_computed_tokens == 0 else []
            num = min(request.num_tokens - request.num_computed_tokens - len(cached) * self.kv.tokens_per_block,
                      budget)
            if not self._capacity_allows(request, num, cached) or not self.kv.allocate(request, num, cached):
                return  # first come, first served: later requests do not overtake
            self.counters.prefix_queries += request.num_tokens
            self.counters.prefix_hits += len(cached) * self.kv.tokens_per_block
            self.waiting.remove(request)
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            batch.add(request, num)
            budget -= num

    def _waits_for_shared_prompt(self, request: Request) -> bool:
        sibling = request.share_prompt_with
        if sibling is None or not self.kv.enable_prefix_caching or sibling.is_finished:
            return False
        return sibling.num_computed_tokens < sibling.num_prompt_tokens

    def _capacity_allows(self, request: Request, num: int, cached: list[int]) -> bool:
        if self.config.capacity_policy != "guaranteed_no_evict":
            return True
        promised = sum(self._max_blocks(r) - len(r.block_ids) for r in self.running)
        wanted = self._max_blocks(request) - len(request.block_ids) - len(cached)
        return wanted <= self.kv.free_after_adopting(cached) - promised

    def _max_blocks(self, request: Request) -> int:
        longest = min(request.num_prompt_tokens + request.params.max_tokens, self.max_seq_len)
        return blocks_needed(longest, self.kv.tokens_per_block)

    # ---- running requests ----

    def _allocate_or_preempt(self, request: Request, num: int, batch: ScheduledBatch) -> bool:
        while not self.kv.allocate(request, num):
            victim = self.running[-1]
            self._preempt(victim, batch)
            if victim is request:
                return False
        return True

    def _preempt(self, request: Request, batch: ScheduledBatch) -> None:
        """Drop the request's KV; it goes to the front of the queue and is recomputed later
        (its full blocks stay in the prefix cache, so recomputation often hits them)."""
        self.running.remove(request)
        self.kv.free(request)
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        request.status = RequestStatus.WAITING
        self.waiting.appendleft(request)
        batch.preempted.append(request)
        self.counters.preempted_total += 1

    def finish(self, request: Request) -> None:
        """Remove a finished or aborted request and free its blocks at once."""
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        self.kv.free(request)
        request.status = RequestStatus.FINISHED
