"""LLMEngine: the step loop. schedule -> execute -> update.

    request ─▶ add_request ─▶ Scheduler.schedule ─▶ SchedulerOutput ─▶ ModelRunner.execute ─▶ RunnerOutput ─▶ _update ─▶ outputs

The records between the parts are plain data (ingot/runtime/records.py); the model runner owns
every tensor, the sampler and the host/GPU overlap; the engine owns the requests: it appends the
tokens they accepted, rewinds the KV of rejected drafts, applies stop conditions and publishes
newly full blocks to the prefix cache.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import time
from pathlib import Path

import torch

from ingot import envs
from ingot.attention import get_backend
from ingot.config import CacheConfig, SchedulerConfig
from ingot.errors import RequestError
from ingot.layers.sampler import make_generator
from ingot.engine_format import read_spec
from ingot.parallel.launch import start_workers
from ingot.runtime.detokenizer import incremental_detokenizer
from ingot.runtime.kv_cache import BlockPool
from ingot.runtime.kv_manager import KVCacheManager
from ingot.runtime.model_runner import ModelRunner
from ingot.runtime.rank import set_up_rank
from ingot.runtime.outputs import CompletionOutput, RequestOutput
from ingot.runtime.records import RunnerOutput, SampledTokens
from ingot.runtime.request import Request
from ingot.runtime.scheduler import Scheduler
from ingot.runtime.stats import EngineStats
from ingot.runtime.stopping import apply_stop_conditions, output_of
from ingot.runtime.validation import check_prompt_kind, validate_request
from ingot.sampling_params import SamplingParams
from ingot.speculative import make_proposer
from ingot.speculative.base import fill_drafts
from ingot.structured.grammar import GrammarCompiler
from ingot.tokenizer import Tokenizer

logger = logging.getLogger("ingot")

# Small batches: the host's work per step is ~0.3 ms at batch 1 (H200, 8B shape), about what the
# overlap's own copies and event cost; measured there: batch-1 decode 202.7 tok/s without overlap,
# 201 with it. It pays at large batches (128/2048: 9.8k -> 13.7k tok/s).
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
                 async_output: bool | None = None, draft_engine: str | Path | None = None) -> None:
        self.engine_dir = Path(engine_dir)
        if envs.num_cpu_threads():
            torch.set_num_threads(envs.num_cpu_threads())
        self.attention_backend = resolve_backend(attention_backend, device)
        self.backend = get_backend(self.attention_backend)
        cache_config = cache_config or CacheConfig()
        self.workers, self.proposer = None, None
        try:
            # None unless built with --speculative; a draft engine loads first, taking its share of memory
            spec = read_spec(self.engine_dir)
            self.proposer = make_proposer(spec.speculative, self.engine_dir, draft_engine, device, spec)
            self.workers = self._start_workers(cache_config, device, enforce_eager)
            parts = set_up_rank(engine_dir, self.backend, device, cache_config, enforce_eager, 0,
                                self.workers.agree_min if self.workers else (lambda n: n))
        except BaseException:
            self.shutdown()
            raise
        self.spec, self.model, self.device = parts.spec, parts.model, parts.device
        self.pool_plan, self.pool = parts.pool_plan, parts.pool
        # Engines built with --load-format dummy have no tokenizer: they take token ids only.
        has_tokenizer = (self.engine_dir / "tokenizer.json").is_file()
        self.tokenizer = Tokenizer.from_dir(engine_dir) if has_tokenizer else None
        cfg, build = self.spec.model, self.spec.build
        tokenizer_eos = self.tokenizer.eos_token_ids if self.tokenizer else ()
        self.eos_token_ids = tuple(sorted(set(tokenizer_eos) | set(cfg.eos_token_ids)))
        # structured output: grammars compiled for this tokenizer on first use, cached by spec
        self.grammars = GrammarCompiler(self.tokenizer, cfg.vocab_size, self.eos_token_ids) if self.tokenizer else None
        self.kv = KVCacheManager(BlockPool(self.pool_plan.num_blocks), build.tokens_per_block,
                                 cache_config.enable_prefix_caching)
        self.scheduler = Scheduler(self.kv, scheduler_config or SchedulerConfig.for_engine(build), build.max_seq_len)
        # Overlap host post-processing with the GPU: default on CUDA, where it pays; a single rank
        # only (the other ranks would need the tokens that stay on rank 0's device).
        if self.workers is not None:
            async_output = False
        elif async_output is None:
            async_output = self.device.type == "cuda"
        self.runner = ModelRunner(self.model, self.pool, self.device, parts.graphs, async_output=async_output,
                                  overlap_min_batch=OVERLAP_MIN_BATCH if self.device.type == "cuda" else 1,
                                  workers=self.workers)
        graphs, draft_len = self.runner.graphs, self.spec.speculative.max_draft_len
        # with verify graphs captured, drafts are filled to their length (fill_drafts says why)
        self.fill_drafts_to = draft_len if graphs is not None and 1 + draft_len in graphs.tokens_per_seq else 0
        self.requests: dict[str, Request] = {}
        self._ids = itertools.count()
        self._totals = {"steps": 0, "prompt": 0, "prompt_computed": 0, "computed": 0, "recomputed": 0, "generated": 0,
                        "drafts": 0, "accepted": 0, "verify_steps": 0, "draft_seconds": 0.0}
        self.stats = self._snapshot(0)

    def _start_workers(self, cache_config: CacheConfig, device: str | None, enforce_eager: bool):
        """A multi-rank engine: one worker process per other rank (ingot/parallel/launch.py)."""
        spec = read_spec(self.engine_dir)
        if spec.world_size == 1:
            return None
        kind = (device or ("cuda" if torch.cuda.is_available() else "cpu")).split(":")[0]
        workers = start_workers(self.engine_dir, spec.mapping, kind, cache_config, enforce_eager, self.attention_backend)
        logger.info("started %d worker ranks (tp=%d, pp=%d)", spec.world_size - 1, spec.mapping.config.tp,
                    spec.mapping.config.pp)
        atexit.register(self.shutdown)  # the workers hear "stop" even when nobody calls shutdown
        return workers

    def shutdown(self) -> None:
        """Stop the worker processes of a multi-rank engine and a draft engine's (nothing to do with one rank)."""
        if getattr(self, "workers", None) is not None:
            self.workers.shutdown()
            self.workers = None
        if getattr(self, "proposer", None) is not None:
            self.proposer.shutdown()

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
        check_prompt_kind(self.engine_dir, self.tokenizer is not None, prompt_text is not None, params)
        token_ids = self.tokenizer.encode(prompt) if prompt_text is not None else list(prompt)
        validate_request(self.spec, token_ids, params)
        request_id = request_id if request_id is not None else f"req-{next(self._ids)}"
        request = Request(request_id, token_ids, params, prompt=prompt_text, eos_token_ids=self.eos_token_ids)
        request.generator = make_generator(params.seed, self.device)
        if params.structured is not None:  # check_prompt_kind refused it without a tokenizer
            request.matcher = self.grammars.matcher(params.structured)
        if self.tokenizer is not None:
            request.detokenizer = incremental_detokenizer(self.tokenizer, token_ids, params.skip_special_tokens)
        return request

    def submit(self, request: Request) -> None:
        if request.request_id in self.requests:
            raise RequestError(f"request_id {request.request_id!r} is already in use")
        self.requests[request.request_id] = request
        self._totals["prompt"] += request.num_prompt_tokens
        self.scheduler.add(request)

    def abort_request(self, request_id: str) -> Request | None:
        """Stop a request and free its KV blocks at once; returns it (None if unknown or done)."""
        request = self.requests.get(request_id)
        if request is not None and not request.is_finished:
            request.drop_placeholder()
            request.finish_reason = "abort"
            self._retire(request)
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
        """One engine step: schedule -> execute -> update. Returns the outputs of the requests that
        produced tokens (or finished) in this step; with the overlap (ModelRunner), a decode step's
        tokens arrive one step later, while the GPU computes the next."""
        self._propose()
        step = self.scheduler.schedule()
        outputs = []
        for result in self.runner.execute(step):
            outputs += self._update(result)
        self.stats = self._snapshot(step.total_tokens)
        return outputs

    def _propose(self) -> None:
        """Draft tokens for the decoding requests, while the batch is small enough to gain from them."""
        running = self.scheduler.running
        if self.proposer is not None and len(running) <= self.spec.speculative.max_batch:
            started = time.perf_counter()
            self.proposer.propose_for(running)
            if self.fill_drafts_to:
                fill_drafts(running, self.fill_drafts_to)
            self._totals["draft_seconds"] += time.perf_counter() - started

    def _retire(self, request: Request) -> None:
        """A request left (finished or aborted): free its blocks and forget it everywhere."""
        self.scheduler.finish(request)
        self.requests.pop(request.request_id, None)
        if self.proposer is not None:
            self.proposer.forget(request)

    def has_unfinished_requests(self) -> bool:
        return self.runner.in_flight is not None or self.scheduler.has_unfinished()

    def _update(self, result: RunnerOutput) -> list[RequestOutput]:
        """Apply a step's output: prompt scores, accepted tokens, rewinds, stops; publish newly full
        blocks; finish requests that asked only for their prompt (max_tokens 0)."""
        self._totals["steps"] += 1
        self._totals["prompt_computed"] += sum(s.num_prompt_tokens for s in result.step.scheduled)
        self._totals["computed"] += result.step.total_tokens
        self._totals["recomputed"] += sum(s.num_recomputed for s in result.step.scheduled)
        for scores in result.prompt_scores:
            scores.request.prompt_logprobs[scores.first:scores.first + len(scores.entries)] = scores.entries
        outputs = [self._accept(sampled) for sampled in result.sampled if not sampled.request.is_finished]
        for scheduled in result.step.scheduled:
            request = scheduled.request
            if scheduled.samples or request.is_finished:
                continue
            self.kv.publish_accepted(request)  # a prompt chunk's full blocks
            if request.params.max_tokens == 0 and request.num_computed_tokens >= request.num_prompt_tokens:
                outputs.append(self._finish_prompt_only(request))
        return outputs

    def _finish_prompt_only(self, request: Request) -> RequestOutput:
        request.finish_reason = "length"
        self._retire(request)
        return output_of(request, "", [])

    def _accept(self, sampled: SampledTokens) -> RequestOutput:
        """Rewind rejected drafts, append the request's new tokens until one stops it, publish."""
        request = sampled.request
        self.kv.rewind(request, sampled.num_rejected)
        self._totals["drafts"] += sampled.num_drafts
        self._totals["accepted"] += sampled.num_drafts - sampled.num_rejected
        self._totals["verify_steps"] += sampled.num_drafts > 0
        delta_text, delta_ids = "", []
        for i, token in enumerate(sampled.token_ids):
            request.append_token(token)
            delta_ids.append(token)
            self._totals["generated"] += 1
            if sampled.logprobs is not None:
                request.logprobs.append(sampled.logprobs[i])
            delta_text += apply_stop_conditions(request, token, self.spec.build.max_seq_len)
            if request.finish_reason is not None:
                break
        self.kv.publish_accepted(request)
        if request.finish_reason is not None:
            self._retire(request)  # its blocks are reused only by later launches: stream order
        return output_of(request, delta_text, delta_ids)

    def _snapshot(self, tokens_scheduled: int) -> EngineStats:
        pool, counters = self.kv.pool, self.scheduler.counters
        return EngineStats(
            num_steps=self._totals["steps"], running=len(self.scheduler.running),
            waiting=len(self.scheduler.waiting), preempted_total=counters.preempted_total,
            computed_tokens_total=self._totals["computed"], recomputed_tokens_total=self._totals["recomputed"],
            kv_blocks_total=pool.num_usable, kv_blocks_used=pool.num_usable - pool.num_free,
            kv_blocks_cached=pool.num_cached_free, tokens_scheduled=tokens_scheduled,
            prompt_tokens_total=self._totals["prompt"], prompt_tokens_computed_total=self._totals["prompt_computed"],
            generation_tokens_total=self._totals["generated"], prefix_cache_queries=counters.prefix_queries,
            prefix_cache_hits=counters.prefix_hits, draft_tokens_total=self._totals["drafts"],
            accepted_draft_tokens_total=self._totals["accepted"], verify_steps_total=self._totals["verify_steps"],
            draft_seconds_total=self._totals["draft_seconds"])
