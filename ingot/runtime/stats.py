"""EngineStats: a snapshot of the engine after a step, immutable so any thread may read it."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class EngineStats:
    num_steps: int = 0
    running: int = 0  # requests admitted and holding KV blocks
    waiting: int = 0  # queued, including preempted requests waiting to be recomputed
    preempted_total: int = 0  # preemptions since start
    # Every position the model computed: prompt chunks, decode tokens and the draft tokens a
    # speculative step verifies (rejected ones included; a draft model's own work is not counted).
    computed_tokens_total: int = 0
    recomputed_tokens_total: int = 0  # of which computed again because a preemption dropped their KV
    kv_blocks_total: int = 0  # usable blocks (the reserved null block excluded)
    kv_blocks_used: int = 0  # referenced by a running request
    kv_blocks_cached: int = 0  # free but still holding a reusable prefix
    tokens_scheduled: int = 0  # tokens computed in the last step
    prompt_tokens_total: int = 0  # prompt tokens received (admitted requests)
    prompt_tokens_computed_total: int = 0  # prompt tokens actually computed (prefix hits excluded)
    generation_tokens_total: int = 0
    prefix_cache_queries: int = 0  # prompt tokens looked up in the prefix cache
    prefix_cache_hits: int = 0  # of which found
    draft_tokens_total: int = 0  # speculative draft tokens verified
    accepted_draft_tokens_total: int = 0  # of which accepted
    verify_steps_total: int = 0  # request-steps that verified at least one draft
    draft_seconds_total: float = 0.0  # time spent proposing drafts (the host-side overhead of speculating)

    @property
    def kv_blocks_free(self) -> int:
        return self.kv_blocks_total - self.kv_blocks_used

    @property
    def kv_usage(self) -> float:
        return self.kv_blocks_used / self.kv_blocks_total if self.kv_blocks_total else 0.0

    @property
    def recomputed_fraction(self) -> float:
        return self.recomputed_tokens_total / self.computed_tokens_total if self.computed_tokens_total else 0.0

    @property
    def prefix_cache_hit_rate(self) -> float:
        return self.prefix_cache_hits / self.prefix_cache_queries if self.prefix_cache_queries else 0.0

    @property
    def draft_acceptance_rate(self) -> float:
        return self.accepted_draft_tokens_total / self.draft_tokens_total if self.draft_tokens_total else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """Tokens a request gets from a step that verifies drafts: the accepted drafts and the target's own."""
        return 1 + self.accepted_draft_tokens_total / self.verify_steps_total if self.verify_steps_total else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "kv_blocks_free": self.kv_blocks_free, "kv_usage": self.kv_usage,
                "recomputed_fraction": self.recomputed_fraction,
                "prefix_cache_hit_rate": self.prefix_cache_hit_rate, "draft_acceptance_rate": self.draft_acceptance_rate,
                "mean_accepted_length": self.mean_accepted_length}
