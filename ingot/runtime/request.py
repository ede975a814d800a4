"""A request's state as the scheduler and the engine see it."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ingot.sampling_params import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"  # not yet admitted, or preempted and waiting to be recomputed
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)  # identity: requests live in lists and dicts, compared by who they are
class Request:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    prompt: str | None = None
    eos_token_ids: tuple[int, ...] = ()
    arrival_time: float = field(default_factory=time.monotonic)
    # token_ids = prompt + generated output; the model has computed KV for the first num_computed_tokens
    token_ids: list[int] = field(init=False)
    num_computed_tokens: int = 0
    block_ids: list[int] = field(default_factory=list)
    block_keys: list[bytes] = field(default_factory=list)  # prefix-cache keys of the full blocks of token_ids
    num_registered_blocks: int = 0  # leading blocks already published to the prefix cache
    # Speculative tokens a proposer suggests after token_ids, verified in the next step (the
    # scheduler takes them); never part of token_ids until accepted.
    draft_tokens: list[int] = field(default_factory=list)
    share_prompt_with: "Request | None" = None  # n > 1: wait for this sample's prompt, then reuse its blocks
    status: RequestStatus = RequestStatus.WAITING
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    stop_reason: str | int | None = None  # the stop string or token id that ended it
    generator: torch.Generator | None = None
    logprobs: list[dict[int, float]] = field(default_factory=list)  # per output token: {id: logprob}
    # per prompt position when params.prompt_logprobs is set: None for the first, then {id: logprob}
    # with the actual token first and the top alternatives (filled as prompt chunks are computed)
    prompt_logprobs: list[dict[int, float] | None] | None = None
    num_preemptions: int = 0
    # Positions below this were computed once and then dropped by a preemption: computing them
    # again is recompute (EngineStats.recomputed_tokens_total).
    recompute_until: int = 0
    detokenizer: Any = None  # runtime/detokenizer.py's, when the engine has a tokenizer
    stop_matcher: Any = None  # StopMatcher over params.stop, made at the first token that is checked
    output_text: str = ""  # output text made visible so far (stop strings cut, possible stop prefixes held back)
    sample_index: int = 0  # which of the parent request's n samples this is
    # params.structured compiled for the engine's tokenizer (ingot/structured/grammar.Matcher): masks
    # each sampled token and advances with it
    matcher: Any = None

    def __post_init__(self) -> None:
        self.token_ids = list(self.prompt_token_ids)
        if self.params.prompt_logprobs is not None:
            self.prompt_logprobs = [None] * len(self.prompt_token_ids)
        self._output_ids: list[int] = []  # the output part of token_ids, kept apart so no step slices it

    def append_token(self, token: int) -> None:
        self.token_ids.append(token)
        self._output_ids.append(token)

    def truncate(self, num_tokens: int) -> None:
        """Keep the first num_tokens tokens (a draft model's mirror dropping guesses the target
        rejected); the prompt is never cut, and the KV of dropped tokens is the caller's to rewind."""
        assert self.num_prompt_tokens <= num_tokens <= self.num_tokens, (num_tokens, self.num_tokens)
        assert self.num_computed_tokens <= num_tokens, "rewind the KV of the dropped tokens first"
        del self.token_ids[num_tokens:]
        del self._output_ids[num_tokens - self.num_prompt_tokens:]

    def drop_placeholder(self) -> None:
        """Take off the placeholder of a step in flight (see runtime/overlap.py): it was read back,
        or the request was aborted and it never will be."""
        if self._output_ids and self._output_ids[-1] < 0:
            self.token_ids.pop()
            self._output_ids.pop()

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        """The generated tokens: the live list (read it, copy it to keep it; never mutate it)."""
        return self._output_ids

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED
