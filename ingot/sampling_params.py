"""SamplingParams: what a request asks of the sampler and of the stop checks.

Defaults and meanings follow vLLM / the OpenAI API so that users find what they expect.
Validation happens once, here, and names the field, its range and the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ingot.errors import RequestError
from ingot.structured.spec import StructuredOutput

# Below this temperature sampling is treated as greedy (argmax): dividing logits by ~0
# overflows, and the distribution is a point mass anyway.
GREEDY_TEMPERATURE = 1e-5
# Most alternatives a request may ask for per position (as vLLM's default max_logprobs): each costs
# a top-k over the vocabulary and host memory for every scored position.
MAX_LOGPROBS = 20
# The sampler divides (or multiplies) logits by the repetition penalty in float32: a penalty near 0
# makes them infinite (NaN log-probabilities, garbage text), one near infinity erases them.
REPETITION_PENALTY_RANGE = (0.01, 100.0)
# Stop strings are matched by an automaton (runtime/stop_strings.py) at O(new text) per token, whatever
# the stops; building it costs ~1 us per character of the stops, on the engine's thread, once per
# request. Their total is bounded so that no request stalls the engine for long (~70 ms at the bound);
# `ingot serve` caps count and length lower (ingot/serve/limits.py). vLLM has no cap; OpenAI allows 4.
MAX_STOP_CHARS = 1 << 16  # all of a request's stop strings together
MAX_STOP_TOKEN_IDS = 256


@dataclass
class SamplingParams:
    max_tokens: int = 16  # 0: only compute (and score) the prompt
    temperature: float = 1.0
    top_k: int = 0  # 0 or -1: no top-k filtering
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # >1 discourages tokens already in prompt or output (CTRL-style)
    presence_penalty: float = 0.0  # subtracted once from a token's logit if it appeared in the output
    frequency_penalty: float = 0.0  # subtracted per occurrence in the output
    seed: int | None = None
    n: int = 1
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    logprobs: int | None = None  # number of top alternatives to return per token; 0 = only the chosen
    # Score the prompt: for every prompt position after the first, the log-probability of the
    # actual token and of this many top alternatives (None: do not score; 0: the actual token only).
    prompt_logprobs: int | None = None
    # With an engine built for speculative decoding: let its proposer draft tokens for this request
    # (the output is the same either way; False opts out, e.g. for latency-insensitive batch jobs).
    speculative: bool = True
    # The answer must match this (JSON schema, regex, choice, grammar: ingot/structured). Such a
    # request does not speculate (its drafts are not checked against the grammar yet).
    structured: StructuredOutput | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop)
        self.stop_token_ids = list(self.stop_token_ids)
        for name in ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty"):
            self._check(name, math.isfinite(getattr(self, name)), "a finite number")
        self._check("max_tokens", self.max_tokens >= 0, ">= 0 (0 computes the prompt only)")
        self._check("temperature", self.temperature >= 0.0, ">= 0 (0 means greedy)")
        self._check("top_k", self.top_k == -1 or self.top_k >= 0, "-1, 0 (off) or a positive count")
        self._check("top_p", 0.0 < self.top_p <= 1.0, "in (0, 1]")
        self._check("min_p", 0.0 <= self.min_p <= 1.0, "in [0, 1]")
        low, high = REPETITION_PENALTY_RANGE
        self._check("repetition_penalty", low <= self.repetition_penalty <= high,
                    f"in [{low}, {high}] (1 means off; the sampler divides float32 logits by it)")
        self._check("presence_penalty", -2.0 <= self.presence_penalty <= 2.0, "in [-2, 2]")
        self._check("frequency_penalty", -2.0 <= self.frequency_penalty <= 2.0, "in [-2, 2]")
        self._check("n", self.n >= 1, ">= 1")
        self._check("seed", self.seed is None or -(2**63) <= self.seed < 2**63, "a 64-bit signed integer")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            self._check(name, value is None or 0 <= value <= MAX_LOGPROBS, f"None or in [0, {MAX_LOGPROBS}]")
        self._check("stop", all(isinstance(s, str) and s for s in self.stop), "a list of non-empty strings")
        self._check("stop", sum(len(s) for s in self.stop) <= MAX_STOP_CHARS,
                    f"strings of at most {MAX_STOP_CHARS} characters in all")
        self._check("stop_token_ids", len(self.stop_token_ids) <= MAX_STOP_TOKEN_IDS
                    and all(isinstance(t, int) and t >= 0 for t in self.stop_token_ids),
                    f"at most {MAX_STOP_TOKEN_IDS} non-negative token ids")
        if self.structured is not None:
            self._check("structured", isinstance(self.structured, StructuredOutput),
                        "a StructuredOutput (ingot.structured), e.g. StructuredOutput.json(schema)")
            # the grammar ends the answer with EOS; ignoring it would ask for tokens past the end
            self._check("ignore_eos", not self.ignore_eos, "False with structured output")
            self.speculative = False

    def _check(self, name: str, ok: bool, allowed: str) -> None:
        if not ok:
            shown = repr(getattr(self, name))
            shown = shown if len(shown) <= 80 else f"{shown[:60]}... ({len(shown)} characters)"
            raise RequestError(f"SamplingParams.{name}={shown} is invalid: must be {allowed}")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE

    @property
    def effective_top_k(self) -> int:
        """0 when top-k is off."""
        return max(self.top_k, 0)
