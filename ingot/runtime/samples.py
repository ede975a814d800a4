"""n > 1: one prompt, n independent samples. Each sample is its own Request (so the scheduler,
stop checks and streaming treat them alike); they share the prompt's KV blocks through the
prefix cache."""

from __future__ import annotations

import dataclasses

from ingot.runtime.request import Request
from ingot.sampling_params import SamplingParams

# Sample i > 0 of a seeded request uses seed + i * SEED_STRIDE: reproducible, and sample 0
# equals the n = 1 result for the same seed.
SEED_STRIDE = 1_000_003


def make_sample_requests(engine, prompt, params: SamplingParams, request_id: str | None = None) -> list[Request]:
    """Validated requests for the prompt's n samples; ids are request_id, or request_id/i when n > 1."""
    first = engine.make_request(prompt, _sample_params(params, 0), request_id)
    requests = [first]
    base_id = first.request_id
    if params.n > 1:
        first.request_id = f"{base_id}/0"
    for index in range(1, params.n):
        # The prompt is scored once, by sample 0; the others reuse its blocks through the prefix cache.
        child_params = dataclasses.replace(_sample_params(params, index), prompt_logprobs=None)
        child = engine.make_request(first.prompt_token_ids, child_params, f"{base_id}/{index}")
        child.prompt = first.prompt
        child.sample_index = index
        child.share_prompt_with = first
        requests.append(child)
    return requests


def _sample_params(params: SamplingParams, index: int) -> SamplingParams:
    seed = None if params.seed is None else params.seed + index * SEED_STRIDE
    return dataclasses.replace(params, n=1, seed=seed)
