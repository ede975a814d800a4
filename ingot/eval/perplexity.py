"""Perplexity of a text under an engine, with sliding windows (`ingot eval perplexity`).

A text of N tokens is read in windows of at most W tokens starting every S tokens (S <= W).
Each window scores the tokens no earlier window scored, each given every token of the window
before it. With S < W every token but the first is scored exactly once, and after the first
window each with at least W - S tokens of context; with S = W (disjoint windows) the first token
of each window has no context and is not scored:

    window k = tokens [k S, min(k S + W, N)),  scores tokens [max(k S + 1, end of window k-1), its end)
    perplexity = exp( -(1 / number scored) * sum_i log p(t_i | the tokens before t_i in its window) )

This is the sliding-window evaluation of transformers' perplexity guide, summed over tokens (the
guide averages each window's mean loss, which weighs a short last window too much); the
transformers reference (reference.py) is computed over the same windows the same way.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ingot.errors import ConfigError

DEFAULT_WINDOW = 1024


@dataclass(frozen=True)
class Window:
    begin: int  # first token of the window
    end: int  # one past its last token
    first_scored: int  # tokens [first_scored, end) are scored here

    @property
    def num_scored(self) -> int:
        return self.end - self.first_scored


@dataclass
class Perplexity:
    perplexity: float
    nll_sum: float  # -sum of log-probabilities (nats)
    num_scored: int  # tokens scored: N - 1 when stride < window
    num_tokens: int
    num_windows: int
    window: int
    stride: int

    def to_dict(self) -> dict:
        return asdict(self)


def windows(num_tokens: int, window: int, stride: int) -> list[Window]:
    if not 0 < stride <= window:
        raise ConfigError(f"--stride {stride} must be in [1, --window {window}]")
    if num_tokens < 2:
        raise ConfigError(f"the text has {num_tokens} token(s); perplexity needs at least 2")
    if num_tokens < window:
        raise ConfigError(f"the text has {num_tokens} tokens, fewer than one window of {window}; "
                          f"pass --window {num_tokens} or less, or a longer text")
    out, scored_to = [], 1
    for begin in range(0, num_tokens, stride):
        end = min(begin + window, num_tokens)
        out.append(Window(begin, end, max(scored_to, begin + 1)))
        scored_to = end
        if end == num_tokens:
            break
    return out


def summarize(nll_per_window: list[float], spans: list[Window], num_tokens: int, window: int,
              stride: int) -> Perplexity:
    nll = sum(nll_per_window)
    scored = sum(w.num_scored for w in spans)
    return Perplexity(math.exp(nll / scored), nll, scored, num_tokens, len(spans), window, stride)


def engine_perplexity(llm, token_ids: list[int], window: int, stride: int, use_progress: bool | None = None,
                      ) -> Perplexity:
    """Score every window as one request (max_tokens 0, prompt_logprobs 0), all in flight together."""
    spans, nll = engine_token_nll(llm, token_ids, window, stride, use_progress)
    return summarize([sum(scored) for scored in nll], spans, len(token_ids), window, stride)


def engine_token_nll(llm, token_ids: list[int], window: int, stride: int, use_progress: bool | None = None,
                     ) -> tuple[list[Window], list[list[float]]]:
    """(the windows, -log p of each token a window scores, in text order): what engine_perplexity
    sums, kept per token so that two engines can be compared token by token (`paired_change`)."""
    from ingot.sampling_params import SamplingParams

    build = llm.engine.spec.build
    if window > build.max_input_len:
        raise ConfigError(f"--window {window} exceeds the engine's max_input_len={build.max_input_len} "
                          f"(max_seq_len={build.max_seq_len}); pass --window {build.max_input_len} or less, "
                          "or rebuild with a larger --max-input-len")
    spans = windows(len(token_ids), window, stride)
    outputs = llm.generate([token_ids[w.begin:w.end] for w in spans], SamplingParams(max_tokens=0, prompt_logprobs=0),
                           use_progress=use_progress)
    nll = []
    for w, out in zip(spans, outputs):
        scores = out.prompt_logprobs
        nll.append([-scores[i - w.begin][token_ids[i]] for i in range(w.first_scored, w.end)])
    return spans, nll


def paired_change(base: list[float], other: list[float]) -> tuple[float, float]:
    """(perplexity of `other` over that of `base` - 1, its standard error), from the -log p each gave
    the same tokens: with d_i = other_i - base_i over n tokens, the ratio is exp(mean d) and its
    standard error exp(mean d) * std(d) / sqrt(n) (the paired comparison llama.cpp's perplexity tool
    reports). It is how much the change could move on other text of the same kind; the rounding of
    a quantized model adds a spread of its own, which one text and one build do not show."""
    if len(base) != len(other) or len(base) < 2:
        raise ValueError(f"paired_change needs the same tokens scored twice (>= 2): got {len(base)} and {len(other)}")
    d = [o - b for b, o in zip(base, other)]
    mean = sum(d) / len(d)
    std = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1))
    ratio = math.exp(mean)
    return ratio - 1, ratio * std / math.sqrt(len(d))
