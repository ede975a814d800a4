"""The scheduler hands out tokens per request; there is no prefill phase and no decode phase.

Each step every admitted request is owed `num_tokens - num_computed_tokens` tokens: the rest of
its prompt (a chunk of it, when the step's token budget is short), one decode token, or one
token plus the draft tokens a proposer put on the request, to be verified. Two small policies
compose (ingot/runtime/policies.py): the batch policy (a token budget per step) and the capacity
policy (who may hold KV blocks, who is preempted).

A scheduled request's num_computed_tokens is advanced at once: the next step may be scheduled
while this one is still on the GPU (ingot/runtime/overlap.py). When drafts are rejected, the
engine rewinds them (KVCacheManager.rewind).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ingot.config import SchedulerConfig
from ingot.runtime.kv_manager import KVCacheManager
from ingot.runtime.policies import CAPACITY_POLICIES, TokenBudget
from ingot.runtime.records import ScheduledRequest, SchedulerOutput
from ingot.runtime.request import Request, RequestStatus


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
        self.capacity = CAPACITY_POLICIES[config.capacity_policy](kv, config, max_seq_len)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # in admission order
        self.counters = SchedulerCounters()

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = TokenBudget(self.config.max_num_tokens, self.config.max_batch_size)
        for request in list(self.running):
            if budget.exhausted:
                break
            if request.status is not RequestStatus.RUNNING:
                continue  # preempted earlier in this loop
            owed = request.num_tokens - request.num_computed_tokens
            num = budget.grant(owed)
            drafts = self._drafts_to_verify(request, owed, budget.tokens_left - num)
            if self._allocate_or_preempt(request, num + len(drafts), out):
                out.scheduled.append(self._schedule(request, num, drafts))
                budget.take(num + len(drafts))
        if not out.preempted:  # memory is short: admitting now would only preempt again
            self._admit_waiting(out, budget)
        return out

    def _schedule(self, request: Request, num: int, drafts: list[int]) -> ScheduledRequest:
        start = request.num_computed_tokens
        recomputed = max(min(start + num, request.recompute_until) - start, 0)
        scheduled = ScheduledRequest(request, start, num + len(drafts), drafts, recomputed)
        request.num_computed_tokens += scheduled.num_tokens
        return scheduled

    def _drafts_to_verify(self, request: Request, owed: int, spare_tokens: int) -> list[int]:
        """The request's proposed draft tokens that fit: only when decoding (one token owed), no
        more than the request may still emit minus the one token verification always adds, and
        within the step's token budget."""
        if not request.draft_tokens:
            return []
        drafts, request.draft_tokens = request.draft_tokens, []
        if owed != 1:
            return []
        room = min(request.params.max_tokens - request.num_output_tokens, self.max_seq_len - request.num_tokens) - 1
        return drafts[: max(min(room, spare_tokens), 0)]

    # ---- admission ----

    def _admit_waiting(self, out: SchedulerOutput, budget: TokenBudget) -> None:
        if not self.waiting or not budget.has_room_for_another(len(self.running)):
            return
        self.capacity.start_admission()
        for request in list(self.waiting):
            if not budget.has_room_for_another(len(self.running)):
                return
            if self._waits_for_shared_prompt(request):
                continue  # an n > 1 sample: admitted once its sibling's prompt blocks are cached
            cached = self._cached_prefix(request)
            owed = request.num_tokens - request.num_computed_tokens - len(cached) * self.kv.tokens_per_block
            num = budget.grant(owed)
            if not self.capacity.admits(request, cached, self.running) or not self.kv.allocate(request, num, cached):
                return  # first come, first served: later requests do not overtake
            self.counters.prefix_queries += request.num_tokens
            self.counters.prefix_hits += len(cached) * self.kv.tokens_per_block
            self.waiting.remove(request)
            request.status = RequestStatus.RUNNING
            request.draft_tokens = []  # drafts are verified only once the prompt is computed
            self.running.append(request)
            out.scheduled.append(self._schedule(request, num, []))
            budget.take(num)

    def _cached_prefix(self, request: Request) -> list[int]:
        """Prefix blocks to adopt. A request that scores its prompt computes all of it: a cached
        block's KV is there, but not the logits that score its tokens."""
        if request.num_computed_tokens or request.params.prompt_logprobs is not None:
            return []
        return self.kv.find_cached_prefix(request)

    def _waits_for_shared_prompt(self, request: Request) -> bool:
        """Until the sibling's reusable prompt blocks are published (after its prompt step is applied)."""
        sibling = request.share_prompt_with
        if sibling is None or not self.kv.enable_prefix_caching or sibling.is_finished:
            return False
        reusable = (sibling.num_prompt_tokens - 1) // self.kv.tokens_per_block
        return sibling.num_registered_blocks < reusable

    # ---- running requests ----

    def _allocate_or_preempt(self, request: Request, num: int, out: SchedulerOutput) -> bool:
        while not self.kv.allocate(request, num):
            victim = self.capacity.victim(self.running[self.running.index(request):])
            self._preempt(victim, out)
            if victim is request:
                return False
        return True

    def _preempt(self, request: Request, out: SchedulerOutput) -> None:
        """Drop the request's KV; it goes to the front of the queue and is recomputed later
        (its full blocks stay in the prefix cache, so recomputation often hits them)."""
        self.running.remove(request)
        self.kv.free(request)
        request.recompute_until = max(request.recompute_until, request.num_computed_tokens)
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        request.status = RequestStatus.WAITING
        request.draft_tokens = []
        self.waiting.appendleft(request)
        out.preempted.append(request)
        self.counters.preempted_total += 1

    def finish(self, request: Request) -> None:
        """Remove a finished or aborted request and free its blocks at once."""
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        self.kv.free(request)
        request.status = RequestStatus.FINISHED
        self.capacity.finished(request)
