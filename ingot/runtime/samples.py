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


def sample_ids(request_id: str, n: int) -> list[str]:
    """The engine request ids of a prompt's n samples: request_id itself, or request_id/i when n > 1."""
    return [request_id] if n == 1 else [f"{request_id}/{index}" for index in range(n)]


def make_sample_requests(engine, prompt, params: SamplingParams, request_id: str | None = None) -> list[Request]:
    """Validated requests for the prompt's n samples, with the ids of sample_ids."""
    first = engine.make_request(prompt, _sample_params(params, 0), request_id)
    requests = [first]
    ids = sample_ids(first.request_id, params.n)
    first.request_id = ids[0]
    for index in range(1, params.n):
        # The prompt is scored once, by sample 0; the others reuse its blocks through the prefix cache.
        child_params = dataclasses.replace(_sample_params(params, index), prompt_logprobs=None)
        child = engine.make_request(first.prompt_token_ids, child_params, ids[index])
        child.prompt = first.prompt
        child.sample_index = index
        child.share_prompt_with = first
        requests.append(child)
    return requests


def _sample_params(params: SamplingParams, index: int) -> SamplingParams:
    seed = None if params.seed is None else params.seed + index * SEED_STRIDE
    return dataclasses.replace(params, n=1, seed=seed)
