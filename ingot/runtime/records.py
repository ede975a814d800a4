"""The plain records one engine step passes along: scheduler -> runner -> engine.

    Scheduler.schedule() ─▶ SchedulerOutput ─▶ ModelRunner.execute() ─▶ RunnerOutput ─▶ LLMEngine._update()
                            per request: which positions            per request: the tokens it accepted,
                            to compute, which draft tokens          their logprobs, how many drafts were
                            to verify                               rejected (their KV is rewound)

Speculative decoding and multi-rank workers speak these records too: a proposer fills a
request's draft tokens before scheduling; a worker on another rank receives the same
SchedulerOutput.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ingot.runtime.request import Request


@dataclass
class ScheduledRequest:
    """One request's share of a step: positions [start, start + num_tokens) are computed.

    The inputs are the request's known tokens at those positions followed by `draft_tokens`
    (speculative tokens to verify, the last len(draft_tokens) inputs). A prompt chunk, a decode
    token and a verify step of k drafts (num_tokens = 1 + k) are all just different counts.
    """

    request: Request
    start: int  # num_computed_tokens before this step
    num_tokens: int
    draft_tokens: list[int] = field(default_factory=list)
    num_recomputed: int = 0  # of the num_tokens, positions computed before and dropped by a preemption

    @property
    def end(self) -> int:
        return self.start + self.num_tokens

    @property
    def samples(self) -> bool:
        """The step reaches the request's newest token: the next token (and the drafts' targets) are
        due, unless the request asked for none (max_tokens 0: the prompt is only computed and scored)."""
        return self.end == self.request.num_tokens + len(self.draft_tokens) and self.request.params.max_tokens > 0

    @property
    def scored_positions(self) -> range:
        """Positions whose logits score the next prompt token (params.prompt_logprobs): those of
        this step followed by another prompt token."""
        if self.request.params.prompt_logprobs is None:
            return range(0)
        return range(self.start, min(self.end, self.request.num_prompt_tokens - 1))

    @property
    def num_sampled(self) -> int:
        """Positions whose logits are needed: each draft's and the one after the last."""
        return len(self.draft_tokens) + 1 if self.samples else 0

    @property
    def num_prompt_tokens(self) -> int:
        """Of this step's positions, how many are prompt positions (computed, not found in the prefix cache)."""
        return max(min(self.request.num_prompt_tokens - self.start, self.num_tokens), 0)


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)

    @property
    def requests(self) -> list[Request]:
        return [s.request for s in self.scheduled]

    @property
    def total_tokens(self) -> int:
        return sum(s.num_tokens for s in self.scheduled)

    @property
    def tokens_per_request(self) -> int | None:
        """The count every request computes when they all compute the same (a graph-able step), else None."""
        counts = {s.num_tokens for s in self.scheduled}
        return counts.pop() if len(counts) == 1 else None

    def without_finished(self) -> "SchedulerOutput":
        """The step minus requests that finished (or were aborted) since it was scheduled."""
        return SchedulerOutput([s for s in self.scheduled if not s.request.is_finished], self.preempted)


@dataclass
class SampledTokens:
    """What one request got from a step."""

    request: Request
    token_ids: list[int]  # accepted drafts, then one token sampled from the target model
    logprobs: list[dict[int, float]] | None = None  # per token in token_ids: {id: logprob}, chosen first
    num_rejected: int = 0  # drafts rejected: their KV positions are rewound

    @property
    def num_drafts(self) -> int:
        """Drafts verified: every token but the last one sampled was an accepted draft."""
        return len(self.token_ids) - 1 + self.num_rejected


@dataclass
class PromptScores:
    """Log-probabilities of prompt tokens [first, first + len(entries)) of one request."""

    request: Request
    first: int  # index of the first scored prompt token (>= 1: the first token has no context)
    entries: list[dict[int, float]]  # per token: {actual id: logprob, then top alternatives}


@dataclass
class RunnerOutput:
    step: SchedulerOutput  # what was computed (every request of it, sampling or not)
    sampled: list[SampledTokens] = field(default_factory=list)
    prompt_scores: list[PromptScores] = field(default_factory=list)
    # (num_sampled_positions, hidden) on the device, in `sampled` order, when the runner was asked
    # for them (want_hidden_states: for heads that draft from the target's hidden states).
    hidden_states: torch.Tensor | None = None
