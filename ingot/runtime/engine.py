"""LLMEngine: the step loop. schedule -> execute -> sample -> update.

    request ─▶ add_request ─▶ Scheduler.schedule ─▶ ModelRunner.execute ─▶ Sampler ─▶ _update ─▶ outputs
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import torch

from ingot import envs
from ingot.attention import get_backend
from ingot.config import CacheConfig, SchedulerConfig
from ingot.errors import RequestError
from ingot.layers.sampler import Sampler, SamplingRow, make_generator
from ingot.runtime.detokenizer import IncrementalDetokenizer
from ingot.runtime.cuda_graphs import DecodeGraphs
from ingot.runtime.kv_cache import BlockPool, KVCachePool, blocks_needed
from ingot.runtime.kv_manager import KVCacheManager
from ingot.runtime.kv_sizing import plan_pool
from ingot.runtime.loader import load_engine
from ingot.runtime.model_runner import ModelRunner
from ingot.runtime.outputs import CompletionOutput, RequestOutput
from ingot.runtime.overlap import PendingStep
from ingot.runtime.request import Request
from ingot.runtime.scheduler import Scheduler
from ingot.runtime.stats import EngineStats
from ingot.runtime.stopping import apply_stop_conditions, output_of
from ingot.sampling_params import SamplingParams
from ingot.tokenizer import Tokenizer

logger = logging.getLogger("ingot")


OVERLAP_MIN_BATCH = 8


def resolve_backend(name: str, device: str | None) -> str:
    """auto: the Triton kernels on CUDA, the torch reference on CPU."""
    if name != "auto":
        return name
    on_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    return "triton" if on_cuda else "torch"


class LLMEngine:
    def __init__(self, engine_dir: str | Path, cache_config: CacheConfig | None = None,
                 device: str | None = None, attention_backend: str = "auto",
                 scheduler_config: SchedulerConfig | None = None, enforce_eager: bool = False,
                 async_output: bool | None = None) -> None:
        self.engine_dir = Path(engine_dir)
        if envs.num_cpu_threads():
            torch.set_num_threads(envs.num_cpu_threads())
        self.attention_backend = resolve_backend(attention_backend, device)
        self.spec, self.model, self.device = load_engine(engine_dir, get_backend(self.attention_backend), device)
        # Engines built with --load-format dummy have no tokenizer: they take token ids only.
        has_tokenizer = (self.engine_dir / "tokenizer.json").is_file()
        self.tokenizer = Tokenizer.from_dir(engine_dir) if has_tokenizer else None
        cfg, build = self.spec.model, self.spec.build
        cache_config = cache_config or CacheConfig()
        tokenizer_eos = self.tokenizer.eos_token_ids if self.tokenizer else ()
        self.eos_token_ids = tuple(sorted(set(tokenizer_eos) | set(cfg.eos_token_ids)))
        self.pool_plan = plan_pool(self.spec, cache_config, self.device)
        logger.info("%s", self.pool_plan.describe())
        self.pool = KVCachePool(cfg.num_layers, self.pool_plan.num_blocks, build.tokens_per_block,
                                cfg.num_kv_heads, cfg.head_dim, self.model.embed_tokens.weight.dtype, self.device)
        self.kv = KVCacheManager(BlockPool(self.pool_plan.num_blocks), build.tokens_per_block,
                                 cache_config.enable_prefix_caching)
        self.scheduler = Scheduler(self.kv, scheduler_config or SchedulerConfig.for_engine(build), build.max_seq_len)
        self.runner = ModelRunner(self.model, self.pool, self.device, self._capture_graphs(enforce_eager))
        self.sampler = Sampler()
        self.requests: dict[str, Request] = {}
        self._ids = itertools.count()
        # Overlap host post-processing with the GPU (default on CUDA, where it pays).
        self.async_output = self.device.type == "cuda" if async_output is None else async_output
        # Small batches: the host's work per step is ~0.3 ms at batch 1 (H200, 8B shape), about
        # what the overlap's own copies and event cost; measured there: batch-1 decode 202.7 tok/s
        # without overlap, 201 with it. It pays at large batches (128/2048: 9.8k -> 13.7k tok/s).
        self.overlap_min_batch = OVERLAP_MIN_BATCH if self.device.type == "cuda" else 1
        self._pending: PendingStep | None = None
        self._totals = {"steps": 0, "prompt": 0, "prompt_computed": 0, "generated": 0}
        self.stats = self._snapshot(0)

    def _capture_graphs(self, enforce_eager: bool) -> DecodeGraphs | None:
        """CUDA graphs for decode at the engine's batch sizes (needs a graph-safe backend)."""
        build = self.spec.build
        if enforce_eager or self.device.type != "cuda" or self.attention_backend != "triton" \
                or not build.cuda_graph_batch_sizes:
            return None
        graphs = DecodeGraphs(self.model, self.pool.layers, build.cuda_graph_batch_sizes,
                              blocks_needed(build.max_seq_len, build.tokens_per_block), build.max_seq_len,
                              build.tokens_per_block, self.device)
        graphs.capture()
        return graphs

    # ---- requests ----

    def add_request(self, prompt: str | list[int], params: SamplingParams | None = None,
                    request_id: str | None = None) -> Request:
        request = self.make_request(prompt, params, request_id)
        self.submit(request)
        return request

    def make_request(self, prompt: str | list[int], params: SamplingParams | None = None,
                     request_id: str | None = None) -> Request:
        """Tokenize and validate; safe to call from any thread (touches no scheduler state)."""
        params = params or SamplingParams()
        prompt_text = prompt if isinstance(prompt, str) else None
        if self.tokenizer is None and (prompt_text is not None or params.stop):
            raise RequestError(f"engine {self.engine_dir} has no tokenizer (built with --load-format dummy): "
                               "give the prompt as token ids and stop with stop_token_ids, not strings")
        token_ids = self.tokenizer.encode(prompt) if prompt_text is not None else list(prompt)
        self._validate(token_ids, params)
        request_id = request_id if request_id is not None else f"req-{next(self._ids)}"
        request = Request(request_id, token_ids, params, prompt=prompt_text, eos_token_ids=self.eos_token_ids)
        request.generator = make_generator(params.seed, self.device)
        if self.tokenizer is not None:
            request.detokenizer = IncrementalDetokenizer(self.tokenizer, token_ids, params.skip_special_tokens)
        return request

    def submit(self, request: Request) -> None:
        if request.request_id in self.requests:
            raise RequestError(f"request_id {request.request_id!r} is already in use")
        self.requests[request.request_id] = request
        self._totals["prompt"] += request.num_prompt_tokens
        self.scheduler.add(request)

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

    def abort_request(self, request_id: str) -> Request | None:
        """Stop a request and free its KV blocks at once; returns it (None if unknown or done)."""
        request = self.requests.pop(request_id, None)
        if request is not None and not request.is_finished:
            request.drop_placeholder()
            request.finish_reason = "abort"
            self.scheduler.finish(request)
            self.stats = self._snapshot(self.stats.tokens_scheduled)  # freed blocks show at once
        return request

    def abort_output(self, request_id: str) -> RequestOutput:
        """Abort and return the request's final output (finish_reason "abort")."""
        request = self.abort_request(request_id)
        if request is None:
            return RequestOutput(request_id, None, [], [CompletionOutput(0, "", [], "abort")], finished=True)
        return output_of(request, "")

    # ---- the step ----

    def step(self) -> list[RequestOutput]:
        """One engine step: schedule -> execute -> sample -> update. Returns the outputs of the
        requests that produced a token (or finished) in this step.

        Overlap (async_output): a pure-decode step is launched without waiting for its tokens;
        the next step is scheduled and launched first, feeding those tokens from the device, and
        only then are they read back and post-processed (stop checks, detokenizing), while the
        GPU computes. A request that stopped has computed one extra token, which is dropped.
        """
        pending, self._pending = self._pending, None
        batch = self.scheduler.schedule()
        outputs: list[RequestOutput] = []
        chained = pending is not None and batch.requests and self._overlappable(batch) \
            and all(r in pending.row_of for r in batch.requests)
        if chained:
            launched = self._launch(batch, pending)
            outputs = self._resolve(pending)
            self._pending = launched.placeholders_for_unfinished()
        else:
            if pending is not None:
                outputs = self._resolve(pending)
                _drop_finished(batch)
            if batch.requests and self.async_output and self._overlappable(batch):
                self._pending = self._launch(batch, None).placeholders_for_unfinished()
            elif batch.requests:
                rows, logits = self.runner.execute(batch.requests, batch.num_new_tokens)
                self._account(batch)
                sampled = [batch.requests[row] for row in rows]
                outputs += self._sample_and_update(sampled, logits) if sampled else []
        self.stats = self._snapshot(batch.total_tokens)
        return outputs

    def _overlappable(self, batch) -> bool:
        """Pure decode of enough sequences, and nothing needs this step's tokens on the host
        before the next launch."""
        if len(batch.requests) < self.overlap_min_batch:
            return False
        return all(n == 1 for n in batch.num_new_tokens) and all(
            r.params.logprobs is None and not _needs_history(r.params) for r in batch.requests)

    def _launch(self, batch, previous: PendingStep | None) -> PendingStep:
        """Execute and sample without reading the tokens back; they stay on the device."""
        input_ids = None
        if previous is not None:
            rows = torch.tensor([previous.row_of[r] for r in batch.requests], device=self.device)
            input_ids = previous.token_ids.index_select(0, rows)
        _, logits = self.runner.execute(batch.requests, batch.num_new_tokens, input_ids)
        rows = [SamplingRow(r.params, r.prompt_token_ids, r.output_token_ids, r.generator) for r in batch.requests]
        token_ids = self.sampler.sample_ids(logits, rows)
        self._account(batch, register=False)  # blocks are published once their tokens are known
        return PendingStep.start(batch.requests, token_ids)

    def _resolve(self, pending: PendingStep) -> list[RequestOutput]:
        """Read a launched step's tokens back and post-process them."""
        outputs = []
        for request, token in zip(pending.requests, pending.read_tokens()):
            if request.is_finished:
                continue  # aborted while in flight
            request.resolve_placeholder(token)
            self._totals["generated"] += 1
            self.kv.register_computed(request)
            delta = apply_stop_conditions(request, token, self.spec.build.max_seq_len)
            if request.finish_reason is not None:
                self.scheduler.finish(request)  # blocks reused only by later launches: stream order
                self.requests.pop(request.request_id, None)
            outputs.append(output_of(request, delta))
        return outputs

    def has_unfinished_requests(self) -> bool:
        return self._pending is not None or self.scheduler.has_unfinished()

    def _account(self, batch, register: bool = True) -> None:
        for request, num in zip(batch.requests, batch.num_new_tokens):
            computed_prompt = max(min(request.num_prompt_tokens - request.num_computed_tokens, num), 0)
            self._totals["prompt_computed"] += computed_prompt
            request.num_computed_tokens += num
            if register:
                self.kv.register_computed(request)
        self._totals["steps"] += 1

    def _snapshot(self, tokens_scheduled: int) -> EngineStats:
        pool, counters = self.kv.pool, self.scheduler.counters
        return EngineStats(
            num_steps=self._totals["steps"], running=len(self.scheduler.running),
            waiting=len(self.scheduler.waiting), preempted_total=counters.preempted_total,
            kv_blocks_total=pool.num_usable, kv_blocks_used=pool.num_usable - pool.num_free,
            kv_blocks_cached=pool.num_cached_free, tokens_scheduled=tokens_scheduled,
            prompt_tokens_total=self._totals["prompt"], prompt_tokens_computed_total=self._totals["prompt_computed"],
            generation_tokens_total=self._totals["generated"], prefix_cache_queries=counters.prefix_queries,
            prefix_cache_hits=counters.prefix_hits)

    def _sample_and_update(self, requests: list[Request], logits: torch.Tensor) -> list[RequestOutput]:
        rows = [SamplingRow(r.params, r.prompt_token_ids, r.output_token_ids, r.generator) for r in requests]
        result = self.sampler(logits, rows)
        outputs = []
        for i, request in enumerate(requests):
            token = result.token_ids[i]
            request.append_token(token)
            self._totals["generated"] += 1
            if request.params.logprobs is not None:
                request.logprobs.append(_logprob_entry(token, result, i))
            delta = apply_stop_conditions(request, token, self.spec.build.max_seq_len)
            if request.finish_reason is not None:
                self.scheduler.finish(request)
                self.requests.pop(request.request_id, None)
            outputs.append(output_of(request, delta))
        return outputs


def _needs_history(params: SamplingParams) -> bool:
    """Penalties read the previous tokens, so such a row cannot be sampled before they are known."""
    return params.repetition_penalty != 1.0 or params.presence_penalty != 0.0 or params.frequency_penalty != 0.0


def _drop_finished(batch) -> None:
    """Requests that stopped while this batch was being scheduled leave it (their blocks are freed)."""
    keep = [i for i, r in enumerate(batch.requests) if not r.is_finished]
    batch.requests = [batch.requests[i] for i in keep]
    batch.num_new_tokens = [batch.num_new_tokens[i] for i in keep]


def _logprob_entry(token: int, result, i: int) -> dict[int, float]:
    entry = {token: result.logprobs[i]}
    if result.top_logprobs is not None:
        for alt, logprob in result.top_logprobs[i]:
            entry.setdefault(alt, logprob)
    return entry
