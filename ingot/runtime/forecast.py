"""How many KV blocks the running requests will hold over their remaining steps: the forecast
MaxUtilization admits by (ingot/runtime/policies.py).

A request r with n_r known tokens that will emit d_r more decode steps holds, s steps from now,

    blocks_r(s) = ceil((n_r + s) / B)     while s <= d_r,   then 0 (finished: its blocks are freed)

(B = tokens_per_block; one token per step, as every running request decodes one token a step).
The pool must hold the peak over s of the sum over requests. Between two finishes the sum only
grows, so the peak is at s = 0 or at a finish, s = d_r: one pass over the requests sorted by d_r
finds it (peak_blocks). Prefix blocks two requests share are counted once for each, so the
forecast errs, if at all, on the safe side there.

d_r. max_tokens is an upper bound: a chat stops at its end-of-sequence token long before it, a
benchmark that ignores EOS runs to it exactly. So d_r comes from a learned share q of max_tokens:
q = the 90th percentile, over the last 128 finished requests, of output tokens / max_tokens (1
until 32 have finished: max_tokens is trusted until the engine has seen otherwise). A request
expects to emit ceil(q * max_tokens) tokens; one already past that is expected to run to
max_tokens (an outlier: assume the worst for it).
"""

from __future__ import annotations

import math
from collections import deque

from ingot.runtime.request import Request

WINDOW, MIN_SEEN, QUANTILE = 128, 32, 0.9


class OutputShare:
    """q: the share of max_tokens a request is expected to emit, learned from finished requests."""

    def __init__(self) -> None:
        self.seen: deque[float] = deque(maxlen=WINDOW)
        self._value: float | None = 1.0  # None: recompute from `seen` when next read

    def observe(self, num_output_tokens: int, most: int) -> None:
        """A request finished with num_output_tokens of the `most` it could have emitted."""
        if most > 0:  # a request that only scores its prompt says nothing about output lengths
            self.seen.append(num_output_tokens / most)
            self._value = None

    @property
    def value(self) -> float:
        if self._value is None:
            ordered = sorted(self.seen)
            self._value = ordered[int(QUANTILE * (len(ordered) - 1))] if len(ordered) >= MIN_SEEN else 1.0
        return self._value


def most_output_tokens(request: Request, max_seq_len: int) -> int:
    """Output tokens the request may emit in all: max_tokens, or fewer where max_seq_len cuts it."""
    return min(request.params.max_tokens, max_seq_len - request.num_prompt_tokens)


def steps_left(request: Request, share: float, max_seq_len: int) -> int:
    """d_r: decode steps after the one that computes the request's last known token."""
    return _steps_left(len(request.token_ids), len(request.prompt_token_ids), request.params.max_tokens, share,
                       max_seq_len)


def _steps_left(num_tokens: int, num_prompt: int, max_tokens: int, share: float, max_seq_len: int) -> int:
    most = min(max_tokens, max_seq_len - num_prompt)
    expected = math.ceil(share * most)
    emits = expected if num_tokens - num_prompt < expected else most
    return num_prompt + emits - 1 - num_tokens


def peak_blocks(requests: list[Request], share: float, horizon: int, tokens_per_block: int, max_seq_len: int) -> int:
    """The peak above, looking `horizon` steps ahead. It runs on every step that may admit, so it
    reads the requests' fields directly. With n_r + B - 1 = q_r * B + m_r and s = k * B + t,
    ceil((n_r + s) / B) = q_r + k + [m_r >= B - t]: the sum over the requests alive at s is
    sum q_r + alive * k + (how many of them have m_r >= B - t), kept as a histogram of m_r."""
    bs, spans = tokens_per_block, []
    for r in requests:
        n = len(r.token_ids)
        spans.append((min(_steps_left(n, len(r.prompt_token_ids), r.params.max_tokens, share, max_seq_len), horizon), n))
    spans.sort()
    peak = whole = alive = 0
    remainders = [0] * bs  # remainders[m]: alive requests with m_r = m
    for steps, length in reversed(spans):  # longest-lived first: alive = those with d_r >= steps
        q, m = divmod(length + bs - 1, bs)
        whole, alive = whole + q, alive + 1
        remainders[m] += 1
        if steps > 0:
            k, t = divmod(steps, bs)
            peak = max(peak, whole + alive * k + sum(remainders[bs - t:]))
    return max(peak, whole)  # whole: every request's blocks now (s = 0)
