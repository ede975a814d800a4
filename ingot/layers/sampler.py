"""Sampler: one batch of logits in, one token per row out.

Order, as vLLM: penalties → grammar mask → logprobs → temperature → top-k → top-p → min-p → sample.
Logprobs are log_softmax of the *penalised* logits, before temperature and filtering: the
model's distribution as the request's penalties shaped it, not the truncated one it was drawn
from (vLLM's default "raw" logprobs skip the penalties too; ours include them).

Every step is a batched torch op over (num_rows, vocab); per-row settings become (num_rows, 1)
tensors. Python loops run over rows only where a row's own RNG must be used. Steps nobody in the
batch asked for are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ingot.sampling_params import SamplingParams
from ingot.structured.grammar import apply_token_bitmask


@dataclass
class SamplingRow:
    """One row of the batch's logits and what it needs to be sampled."""

    params: SamplingParams
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    generator: torch.Generator | None = None  # per-request RNG on the logits' device; None = global RNG
    # structured output: the tokens allowed at this row, packed (ceil(vocab / 32),) int32 on the host
    # (ingot/structured/grammar.py); None = every token
    allowed: torch.Tensor | None = None


@dataclass
class SamplerOutput:
    token_ids: list[int]  # one per row
    logprobs: list[float | None] | None  # chosen token's logprob; None when no row asked for logprobs
    top_logprobs: list[list[tuple[int, float]]] | None  # per row, params.logprobs best (id, logprob), descending


def make_generator(seed: int | None, device: torch.device | str) -> torch.Generator | None:
    """A request's own RNG, so a seeded request draws the same numbers whatever shares its batch."""
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(seed)


class Sampler:
    def __call__(self, logits: torch.Tensor, rows: list[SamplingRow]) -> SamplerOutput:
        # logits: (num_rows, vocab) float32; never modified in place (the caller may reuse it)
        assert logits.dim() == 2 and logits.shape[0] == len(rows), (tuple(logits.shape), len(rows))
        logits = apply_allowed(apply_penalties(logits.float(), rows), rows)
        want_logprobs = any(r.params.logprobs is not None for r in rows)
        logprobs = torch.log_softmax(logits, dim=-1) if want_logprobs else None
        greedy = [r.params.greedy for r in rows]
        token_ids = logits.argmax(dim=-1)  # first maximum on ties: the lowest id
        if not all(greedy):
            sampled = _sample(_filter(_apply_temperature(logits, rows), rows), rows)
            is_greedy = torch.tensor(greedy, device=logits.device)
            token_ids = torch.where(is_greedy, token_ids, sampled)
        if logprobs is None:
            return SamplerOutput(token_ids.tolist(), None, None)
        return _with_logprobs(token_ids, logprobs, rows)

    def sample_ids(self, logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
        """Token ids as a device tensor, without waiting for the device: for rows that want no
        logprobs (the engine's overlapped decode path). (num_rows,) int64."""
        assert all(r.params.logprobs is None for r in rows)
        logits = apply_allowed(apply_penalties(logits.float(), rows), rows)
        token_ids = logits.argmax(dim=-1)
        greedy = [r.params.greedy for r in rows]
        if not all(greedy):
            sampled = _sample(_filter(_apply_temperature(logits, rows), rows), rows)
            token_ids = torch.where(torch.tensor(greedy, device=logits.device), token_ids, sampled)
        return token_ids


# -- penalties --------------------------------------------------------------------------------

def apply_penalties(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """Repetition (CTRL): a token seen in prompt or output has its logit divided by r if positive,
    multiplied by r if negative. Presence / frequency (OpenAI): logit -= presence * [count > 0]
    + frequency * count, counting the output only."""
    params = [r.params for r in rows]
    rep = [p.repetition_penalty for p in params]
    pres = [p.presence_penalty for p in params]
    freq = [p.frequency_penalty for p in params]
    if all(x == 1.0 for x in rep) and not any(pres) and not any(freq):
        return logits
    vocab = logits.shape[1]
    counts = _token_counts([r.output_token_ids for r in rows], vocab, logits.device)  # (num_rows, vocab)
    if any(x != 1.0 for x in rep):
        seen = (_token_counts([r.prompt_token_ids for r in rows], vocab, logits.device) > 0) | (counts > 0)
        r = _column(rep, logits)
        penalised = torch.where(logits > 0, logits / r, logits * r)
        logits = torch.where(seen, penalised, logits)
    if any(pres) or any(freq):
        logits = logits - _column(freq, logits) * counts - _column(pres, logits) * (counts > 0).to(logits.dtype)
    return logits


def apply_allowed(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """Structured output: disallowed tokens of the rows that carry a mask get -inf (one batched op
    for those rows; rows without a mask are left exactly as they were, and pay nothing when no row
    has one)."""
    constrained = [i for i, r in enumerate(rows) if r.allowed is not None]
    if not constrained:
        return logits
    return apply_token_bitmask(logits, constrained, torch.stack([rows[i].allowed for i in constrained]))


def _column(values: list[float], like: torch.Tensor) -> torch.Tensor:
    """Per-row settings as a (num_rows, 1) tensor that broadcasts over the vocab."""
    return torch.tensor(values, dtype=like.dtype, device=like.device).unsqueeze(1)


def _token_counts(id_lists: list[list[int]], vocab: int, device: torch.device) -> torch.Tensor:
    """(num_rows, vocab) float counts of each id per row, built with one scatter_add.
    Rows are padded with id `vocab`, which lands in an extra column that is dropped."""
    width = max((len(ids) for ids in id_lists), default=0)
    padded = torch.full((len(id_lists), width), vocab, dtype=torch.long)
    for i, ids in enumerate(id_lists):
        padded[i, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
    counts = torch.zeros(len(id_lists), vocab + 1, device=device)
    counts.scatter_add_(1, padded.to(device), torch.ones(padded.shape, device=device))
    return counts[:, :vocab]


# -- temperature and filtering ----------------------------------------------------------------

def _apply_temperature(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    # Greedy rows divide by 1: their result is taken from the argmax, and 1/~0 would overflow.
    temps = [1.0 if r.params.greedy else r.params.temperature for r in rows]
    if all(t == 1.0 for t in temps):
        return logits
    return logits / _column(temps, logits)


def _filter(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """Set the logits of tokens outside top-k, the top-p nucleus, or the min-p floor to -inf."""
    params = [r.params for r in rows]
    if any(p.effective_top_k for p in params) or any(p.top_p < 1.0 for p in params):
        logits = _top_k_top_p(logits, [p.effective_top_k for p in params], [p.top_p for p in params])
    if any(p.min_p > 0.0 for p in params):
        logits = _min_p(logits, [p.min_p for p in params])
    return logits


def _top_k_top_p(logits: torch.Tensor, top_k: list[int], top_p: list[float]) -> torch.Tensor:
    """One ascending sort serves both. Top-k keeps the last k sorted positions (exactly k tokens,
    ties broken by the sort). Top-p then drops a token when the tokens above it already hold
    probability >= p, i.e. when the ascending cumulative sum up to it is <= 1 - p: what remains
    is the smallest set of top tokens whose mass reaches p. The largest token is always kept."""
    num_rows, vocab = logits.shape
    sorted_logits, order = logits.sort(dim=-1)  # ascending
    positions = torch.arange(vocab, device=logits.device).expand(num_rows, vocab)
    k = torch.tensor([kk if 0 < kk < vocab else vocab for kk in top_k], device=logits.device).unsqueeze(1)
    sorted_logits = sorted_logits.masked_fill(positions < vocab - k, float("-inf"))
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    outside = (cumulative <= 1.0 - _column(top_p, logits)) & (positions < vocab - 1)
    sorted_logits = sorted_logits.masked_fill(outside, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)


def _min_p(logits: torch.Tensor, min_p: list[float]) -> torch.Tensor:
    """Drop tokens whose probability is below min_p times the most likely token's."""
    probs = logits.softmax(dim=-1)
    floor = _column(min_p, logits) * probs.amax(dim=-1, keepdim=True)
    return logits.masked_fill(probs < floor, float("-inf"))


# -- sampling ---------------------------------------------------------------------------------

def _sample(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """The exponential race (Gumbel-max in another form): draw E_i ~ Exp(1) per token and take
    argmax_i p_i / E_i. E_i / p_i ~ Exp(rate p_i), and the first of independent exponential clocks
    to ring is clock i with probability p_i / sum_j p_j, so the argmax is a sample of p (and
    -log E_i is Gumbel, so this is argmax(log p_i + G_i)). No cumsum, no search: one pass.
    Each row's noise comes from its own generator, so a seeded row draws the same noise in any
    batch; unseeded rows share one draw from the global RNG."""
    probs = logits.softmax(dim=-1)  # filtered tokens have probability 0 and can never win
    noise = torch.empty_like(probs)
    seeded = [i for i, r in enumerate(rows) if r.generator is not None]
    if len(seeded) < len(rows):
        noise.exponential_()
    for i in seeded:
        noise[i].exponential_(generator=rows[i].generator)
    # E = 0 has probability ~2^-24 but would give p/0 = inf (or nan for p = 0); keep it finite.
    noise.clamp_(min=torch.finfo(noise.dtype).tiny)
    return (probs / noise).argmax(dim=-1)


def _with_logprobs(token_ids: torch.Tensor, logprobs: torch.Tensor, rows: list[SamplingRow]) -> SamplerOutput:
    """Chosen-token and top-n logprobs, moved to the host in one transfer each."""
    chosen = logprobs.gather(1, token_ids.unsqueeze(1)).squeeze(1).tolist()
    wants = [r.params.logprobs for r in rows]
    n_max = max(n for n in wants if n is not None)
    top_ids, top_values = [[] for _ in rows], [[] for _ in rows]
    if n_max > 0:
        values, ids = logprobs.topk(min(n_max, logprobs.shape[1]), dim=-1)  # sorted, descending
        top_ids, top_values = ids.tolist(), values.tolist()
    top = [list(zip(top_ids[i][: n or 0], top_values[i][: n or 0])) for i, n in enumerate(wants)]
    chosen = [lp if n is not None else None for lp, n in zip(chosen, wants)]
    return SamplerOutput(token_ids.tolist(), chosen, top)
