"""Prompt log-probabilities: how likely the model finds each prompt token given the ones before.

The hidden state at prompt position p gives the distribution of token p + 1, so a prompt chunk
[start, end) scores tokens start + 1 .. end (those still in the prompt); chunks add up to every
prompt token after the first, exactly as one unsplit prompt would. The scores are the model's raw
log-softmax (no penalties, no temperature), as vLLM's prompt_logprobs are.

Logits of every prompt position would be (tokens x vocabulary) floats — 1.2 GB for 2,048 tokens
of a 152k vocabulary — so they are computed ROWS_PER_PASS rows at a time and reduced to the
actual token's log-probability and the top-k before the next slice.
"""

from __future__ import annotations

import torch

ROWS_PER_PASS = 256


def score_rows(model, hidden: torch.Tensor, rows: list[int], targets: list[int], top_k: list[int],
               ) -> list[dict[int, float]]:
    """hidden: (num_tokens, hidden) of the step. For each of `rows`: {target: logprob, then the
    row's top_k most likely tokens: logprob}, the target first."""
    device = hidden.device
    entries: list[dict[int, float]] = []
    for begin in range(0, len(rows), ROWS_PER_PASS):
        index = torch.tensor(rows[begin:begin + ROWS_PER_PASS], device=device)
        wanted = torch.tensor(targets[begin:begin + ROWS_PER_PASS], device=device)
        logprobs = torch.log_softmax(model.compute_logits(hidden.index_select(0, index)), dim=-1)
        chosen = logprobs.gather(1, wanted.unsqueeze(1)).squeeze(1).tolist()
        ks = top_k[begin:begin + ROWS_PER_PASS]
        top_ids, top_values = [[]] * len(ks), [[]] * len(ks)
        if max(ks) > 0:
            values, ids = logprobs.topk(max(ks), dim=-1)
            top_ids, top_values = ids.tolist(), values.tolist()
        for i, (target, k) in enumerate(zip(targets[begin:begin + ROWS_PER_PASS], ks)):
            entry = {target: chosen[i]}
            for alt, value in zip(top_ids[i][:k], top_values[i][:k]):
                entry.setdefault(alt, value)
            entries.append(entry)
    return entries
