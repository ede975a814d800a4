"""The scheduler's two policies, as small classes (TensorRT-LLM's names).

capacity policy: who may hold KV blocks.
    GuaranteedNoEvict  admit a request only if blocks for its whole possible length (prompt +
                       max_tokens) are guaranteed beside what running requests were promised;
                       nothing is ever preempted.
    MaxUtilization     admit a request while a forecast says that it and the running requests
                       will never hold more blocks than the pool has; when blocks run out anyway
                       (a forecast was wrong), preempt the request whose KV is cheapest to
                       recompute (its KV is dropped and recomputed later).

batch policy: how many tokens each request computes this step.
    TokenBudget        at most max_batch_size sequences and max_num_tokens tokens per step;
                       running requests first, oldest first (so a long prompt is chunked and never
                       stalls running decodes), then waiting ones in arrival order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from ingot.config import SchedulerConfig
from ingot.runtime.forecast import OutputShare, most_output_tokens, peak_blocks, steps_left
from ingot.runtime.kv_cache import blocks_needed
from ingot.runtime.kv_manager import KVCacheManager
from ingot.runtime.request import Request


class CapacityPolicy(ABC):
    name: str = "base"

    def __init__(self, kv: KVCacheManager, config: SchedulerConfig, max_seq_len: int) -> None:
        self.kv, self.config, self.max_seq_len = kv, config, max_seq_len

    def start_admission(self) -> None:
        """Once a step, after the running requests got their blocks, before the first admits()."""

    @abstractmethod
    def admits(self, request: Request, cached: list[int], running: list[Request]) -> bool:
        """May `request` start now, adopting the `cached` prefix blocks? (True commits to it.)"""

    def finished(self, request: Request) -> None:
        """`request` left the engine; its finish_reason says how."""

    def victim(self, candidates: list[Request]) -> Request:
        """Whom to preempt when a running request needs blocks and none are free, of `candidates`
        (that request and those admitted after it, none scheduled yet this step): the one with the
        fewest computed tokens, which costs least to recompute; the newest of equals."""
        return min(reversed(candidates), key=lambda r: r.num_computed_tokens)


class MaxUtilization(CapacityPolicy):
    """Admission by forecast (ingot/runtime/forecast.py). Admitting whatever fits now, as this
    policy once did, thrashes when the workload outgrows the pool: the pool fills with prompts
    while the running requests still grow a token a step, blocks run out, the newest request is
    preempted after computing its whole prompt, and it is admitted again as soon as a finish frees
    blocks, to be preempted again (287 preemptions in a 1024/512 random-lengths run on an H200).

    Rule: admit a waiting request only if the peak of the blocks it and the running requests will
    hold, each until its expected finish, fits the pool. A step's first candidate is checked
    against that peak computed; each later one in the same step adds its own peak to it (a bound:
    the peaks need not coincide), and the next step forecasts afresh. A request is always admitted
    into an empty batch (the pool holds one max_seq_len sequence). config.admission_lookahead caps
    how many steps ahead the forecast looks (0: admit whatever fits now). The forecast can still
    err: a request that outlives its expected length, a chunked prompt that finishes steps later
    than counted, a speculative step that emits several tokens. Then preemption takes the blocks,
    from the victim above.
    """

    name = "max_utilization"

    def __init__(self, kv: KVCacheManager, config: SchedulerConfig, max_seq_len: int) -> None:
        super().__init__(kv, config, max_seq_len)
        self.share = OutputShare()
        lookahead = config.admission_lookahead
        self.horizon = max_seq_len if lookahead is None else lookahead
        self._peak: int | None = None  # this step's forecast peak, admissions included; None: none yet

    def start_admission(self) -> None:
        self._peak = None  # forecast lazily: most steps admit nothing

    def admits(self, request: Request, cached: list[int], running: list[Request]) -> bool:
        if not running:
            return True
        bs = self.kv.tokens_per_block
        # Implied by the forecast below (its s = 0 term: the running requests hold no fewer blocks
        # than are used, and the request all of its prompt); checked first because it is cheap.
        if blocks_needed(request.num_tokens, bs) - len(cached) > self.kv.free_after_adopting(cached):
            return False
        steps = min(max(steps_left(request, self.share.value, self.max_seq_len), 0), self.horizon)
        wanted = blocks_needed(request.num_tokens + steps, bs)
        if self._peak is None:  # the step's first candidate: the peak of the sum, computed
            peak = peak_blocks([*running, request], self.share.value, self.horizon, bs, self.max_seq_len)
        else:  # later ones: the sum of the peaks, a bound (forecast afresh next step)
            peak = self._peak + wanted
        if peak > self.kv.pool.num_usable:
            return False
        self._peak = peak
        return True

    def finished(self, request: Request) -> None:
        if request.finish_reason in ("stop", "length"):  # an abort says nothing about lengths
            self.share.observe(request.num_output_tokens, most_output_tokens(request, self.max_seq_len))


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
