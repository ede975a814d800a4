"""The scheduler hands out tokens per request; there is no prefill phase and no decode phase.

Each step every admitted request is owed `num_tokens - num_computed_tokens` tokens: the rest
of its prompt (a chunk of it, if the step's token budget is short) or one decode token. The
step's budget is `max_num_tokens` tokens over at most `max_batch_size` sequences. Running
requests are served first, oldest first, so a long prompt never stalls running decodes; when
KV blocks run out, the most recently admitted request is preempted and later recomputed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from ingot.runtime.kv_cache import BlockAllocator, blocks_needed
from ingot.runtime.request import Request, RequestStatus


@dataclass
class ScheduledBatch:
    requests: list[Request] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)  # tokens computed for each request this step
    preempted: list[Request] = field(default_factory=list)

    @property
    def total_tokens(self) -> int:
        return sum(self.num_new_tokens)

    def __len__(self) -> int:
        return len(self.requests)


class Scheduler:
    def __init__(self, allocator: BlockAllocator, tokens_per_block: int, max_batch_size: int,
                 max_num_tokens: int) -> None:
        self.allocator = allocator
        self.tokens_per_block = tokens_per_block
        self.max_batch_size = max_batch_size
        self.max_num_tokens = max_num_tokens
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # in admission order

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self.max_num_tokens
        for request in list(self.running):
            if budget == 0:
                break
            if request.status is not RequestStatus.RUNNING:
                continue  # preempted earlier in this loop
            num = min(request.num_tokens - request.num_computed_tokens, budget)
            if not self._reserve_or_preempt(request, num, batch):
                continue
            batch.requests.append(request)
            batch.num_new_tokens.append(num)
            budget -= num
        self._admit_waiting(batch, budget)
        return batch

    def _admit_waiting(self, batch: ScheduledBatch, budget: int) -> None:
        while self.waiting and budget > 0 and len(self.running) < self.max_batch_size and not batch.preempted:
            request = self.waiting[0]
            num = min(request.num_tokens - request.num_computed_tokens, budget)
            if not self._reserve(request, num):
                break  # first-come first-served: do not let later requests overtake
            self.waiting.popleft()
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            batch.requests.append(request)
            batch.num_new_tokens.append(num)
            budget -= num

    def _reserve(self, request: Request, num_new: int) -> bool:
        """Make the request's blocks cover its computed tokens plus num_new; False if they don't fit."""
        needed = blocks_needed(request.num_computed_tokens + num_new, self.tokens_per_block)
        extra = needed - len(request.block_ids)
        if extra <= 0:
            return True
        if extra > self.allocator.num_free:
            return False
        request.block_ids.extend(self.allocator.allocate(extra))
        return True

    def _reserve_or_preempt(self, request: Request, num_new: int, batch: ScheduledBatch) -> bool:
        while not self._reserve(request, num_new):
            victim = self.running[-1]
            self._preempt(victim, batch)
            if victim is request:
                return False
        return True

    def _preempt(self, request: Request, batch: ScheduledBatch) -> None:
        """Drop the request's KV; it goes to the front of the queue and is recomputed later."""
        self.running.remove(request)
        self.allocator.free(request.block_ids)
        request.block_ids = []
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        request.status = RequestStatus.WAITING
        self.waiting.appendleft(request)
        batch.preempted.append(request)
        if request in batch.requests:
            index = batch.requests.index(request)
            del batch.requests[index], batch.num_new_tokens[index]

    def finish(self, request: Request) -> None:
        """Remove a finished or aborted request and free its blocks at once."""
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        self.allocator.free(request.block_ids)
        request.block_ids = []
        request.status = RequestStatus.FINISHED
