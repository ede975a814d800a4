"""LLMEngine: the step loop. schedule -> execute -> sample -> update.

    request ─▶ add_request ─▶ Scheduler.schedule ─▶ ModelRunner.execute ─▶ Sampler ─▶ _update ─▶ outputs
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import torch

from ingot.attention import get_backend
from ingot.config import CacheConfig
from ingot.errors import RequestError
from ingot.layers.sampler import Sampler, SamplingRow, make_generator
from ingot.runtime.detokenizer import IncrementalDetokenizer
from ingot.runtime.kv_cache import BlockAllocator, KVCachePool
from ingot.runtime.kv_sizing import plan_pool
from ingot.runtime.loader import load_engine
from ingot.runtime.model_runner import ModelRunner
from ingot.runtime.outputs import RequestOutput
from ingot.runtime.request import Request
from ingot.runtime.scheduler import Scheduler
from ingot.runtime.stopping import apply_stop_conditions, output_of
from ingot.sampling_params import SamplingParams
from ingot.tokenizer import Tokenizer

logger = logging.getLogger("ingot")


class LLMEngine:
    def __init__(self, engine_dir: str | Path, cache_config: CacheConfig | None = None,
                 device: str | None = None, attention_backend: str = "torch") -> None:
        self.engine_dir = Path(engine_dir)
        self.spec, self.model, self.device = load_engine(engine_dir, get_backend(attention_backend), device)
        self.tokenizer = Tokenizer.from_dir(engine_dir)
        cfg, build = self.spec.model, self.spec.build
        self.eos_token_ids = tuple(sorted(set(self.tokenizer.eos_token_ids) | set(cfg.eos_token_ids)))
        pool_plan = plan_pool(self.spec, cache_config or CacheConfig(), self.device)
        logger.info("%s", pool_plan.describe())
        self.pool_plan = pool_plan
        self.pool = KVCachePool(cfg.num_layers, pool_plan.num_blocks, build.tokens_per_block, cfg.num_kv_heads,
                                cfg.head_dim, self.model.embed_tokens.weight.dtype, self.device)
        self.allocator = BlockAllocator(pool_plan.num_blocks)
        self.scheduler = Scheduler(self.allocator, build.tokens_per_block, build.max_batch_size,
                                   build.max_num_tokens)
        self.runner = ModelRunner(self.model, self.pool, self.device)
        self.sampler = Sampler()
        self.requests: dict[str, Request] = {}
        self._ids = itertools.count()

    # ---- requests ----

    def add_request(self, prompt: str | list[int], params: SamplingParams | None = None,
                    request_id: str | None = None) -> Request:
        params = params or SamplingParams()
        prompt_text = prompt if isinstance(prompt, str) else None
        token_ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        self._validate(token_ids, params)
        request_id = request_id if request_id is not None else str(next(self._ids))
        if request_id in self.requests:
            raise RequestError(f"request_id {request_id!r} is already in use")
        request = Request(request_id, token_ids, params, prompt=prompt_text, eos_token_ids=self.eos_token_ids)
        request.generator = make_generator(params.seed, self.device)
        request.detokenizer = IncrementalDetokenizer(self.tokenizer, token_ids, params.skip_special_tokens)
        self.requests[request_id] = request
        self.scheduler.add(request)
        return request

    def _validate(self, token_ids: list[int], params: SamplingParams) -> None:
        build, vocab = self.spec.build, self.spec.model.vocab_size
        if not token_ids:
            raise RequestError("prompt is empty: give at least one token")
        if len(token_ids) > build.max_input_len:
            raise RequestError(f"prompt has {len(token_ids)} tokens, over the engine's max_input_len="
                               f"{build.max_input_len}; shorten it or rebuild with a larger --max-input-len")
        if len(token_ids) + params.max_tokens > build.max_seq_len:
            raise RequestError(f"prompt ({len(token_ids)} tokens) + max_tokens ({params.max_tokens}) = "
                               f"{len(token_ids) + params.max_tokens} exceeds the engine's max_seq_len="
                               f"{build.max_seq_len}; lower max_tokens to at most "
                               f"{build.max_seq_len - len(token_ids)} or rebuild with a larger --max-seq-len")
        bad = [t for t in token_ids if not 0 <= t < vocab]
        if bad:
            raise RequestError(f"prompt token ids {bad[:5]} are outside the vocabulary [0, {vocab})")

    def abort_request(self, request_id: str) -> None:
        request = self.requests.pop(request_id, None)
        if request is not None and not request.is_finished:
            request.finish_reason = "abort"
            self.scheduler.finish(request)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    # ---- the step ----

    def step(self) -> list[RequestOutput]:
        batch = self.scheduler.schedule()
        if not batch.requests:
            return []
        rows, logits = self.runner.execute(batch.requests, batch.num_new_tokens)
        for request, num in zip(batch.requests, batch.num_new_tokens):
            request.num_computed_tokens += num
        sampled = [batch.requests[row] for row in rows]
        outputs = self._sample_and_update(sampled, logits) if sampled else []
        return outputs

    def _sample_and_update(self, requests: list[Request], logits: torch.Tensor) -> list[RequestOutput]:
        rows = [SamplingRow(r.params, r.prompt_token_ids, r.output_token_ids, r.generator) for r in requests]
        result = self.sampler(logits, rows)
        outputs = []
        for i, request in enumerate(requests):
            token = result.token_ids[i]
            request.token_ids.append(token)
            if request.params.logprobs is not None:
                request.logprobs.append(_logprob_entry(token, result, i))
            delta = apply_stop_conditions(request, token, self.spec.build.max_seq_len)
            if request.finish_reason is not None:
                self.scheduler.finish(request)
                self.requests.pop(request.request_id, None)
            outputs.append(output_of(request, delta))
        return outputs


def _logprob_entry(token: int, result, i: int) -> dict[int, float]:
    entry = {token: result.logprobs[i]}
    if result.top_logprobs is not None:
        for alt, logprob in result.top_logprobs[i]:
            entry.setdefault(alt, logprob)
    return entry
