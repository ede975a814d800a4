"""LLM: the Python entry point. Build (or open) an engine, then generate or chat."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from ingot import envs
from ingot.engine_format import ENGINE_JSON, current_device
from ingot.config import BuildConfig, CacheConfig
from ingot.progress import Progress
from ingot.runtime.engine import LLMEngine
from ingot.runtime.outputs import RequestOutput
from ingot.runtime.samples import make_sample_requests
from ingot.sampling_params import SamplingParams

logger = logging.getLogger("ingot")

Prompt = str | list[int]
Messages = list[dict[str, str]]


class LLM:
    """`LLM("engines/NAME")` opens a built engine; `LLM("path/to/hf" | "model.gguf" | "smollm2")`
    builds one into the cache directory first (once; later calls reuse it)."""

    def __init__(self, model: str | Path, build: BuildConfig | None = None, cache: CacheConfig | None = None,
                 device: str | None = None, draft_engine: str | Path | None = None) -> None:
        engine_dir = Path(model)
        if not (engine_dir / ENGINE_JSON).is_file():
            engine_dir = ensure_engine(str(model), build or BuildConfig(), device)
        # draft_engine: the draft model's engine, for a target built with --speculative draft_target
        self.engine = LLMEngine(engine_dir, cache, device=device, draft_engine=draft_engine)
        self.tokenizer = self.engine.tokenizer

    def generate(self, prompts: Prompt | Sequence[Prompt], params: SamplingParams | None = None,
                 use_progress: bool | None = None) -> list[RequestOutput]:
        """One RequestOutput per prompt, in order: text, token ids and finish reason of each sample.
        All prompts run through in-flight batching together. A progress line is shown for long
        batches on a terminal (use_progress=None), always (True) or never (False)."""
        params = params or SamplingParams()
        batch = [prompts] if isinstance(prompts, str) or _is_token_list(prompts) else list(prompts)
        groups = [self._add(prompt, params) for prompt in batch]
        num_samples = sum(map(len, groups))
        show = use_progress if use_progress is not None else (num_samples >= 16 and sys.stderr.isatty())
        progress = Progress(num_samples, enabled=show)
        finals: dict[str, RequestOutput] = {}
        for output in self._run():
            if output.finished:
                finals[output.request_id] = output
            progress.update(int(output.finished), len(output.outputs[0].delta_token_ids))
        return [_merge([finals[rid] for rid in ids]) for ids in groups]

    def chat(self, messages: Messages | Sequence[Messages], params: SamplingParams | None = None,
             ) -> list[RequestOutput]:
        """Apply the model's chat template to each conversation, then generate."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        prompts = [self.tokenizer.encode_chat(conversation) for conversation in conversations]
        return self.generate(prompts, params)

    def stream(self, prompt: Prompt, params: SamplingParams | None = None) -> Iterator[RequestOutput]:
        """Yield the request's output after every step; each carries delta_text."""
        (request_id,) = self._add(prompt, dataclasses.replace(params or SamplingParams(), n=1))
        for output in self._run():
            if output.request_id == request_id:
                yield output

    def _add(self, prompt: Prompt, params: SamplingParams) -> list[str]:
        """Add the prompt's n samples as separate requests; return their ids."""
        requests = make_sample_requests(self.engine, prompt, params)
        for request in requests:
            self.engine.submit(request)
        return [r.request_id for r in requests]

    def _run(self) -> Iterator[RequestOutput]:
        while self.engine.has_unfinished_requests():
            yield from self.engine.step()


def _is_token_list(value) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], int)


def _merge(outputs: list[RequestOutput]) -> RequestOutput:
    first = outputs[0]
    completions = [o.outputs[0] for o in outputs]
    return RequestOutput(first.request_id, first.prompt, first.prompt_token_ids, completions, finished=True,
                         prompt_logprobs=first.prompt_logprobs)


def ensure_engine(model: str, build: BuildConfig, device: str | None) -> Path:
    """Build MODEL into the cache directory unless an engine for the same inputs is there."""
    from ingot.builder.build import build_engine

    target = current_device(device)
    source = str(Path(model).resolve()) if Path(model).exists() else model
    key = json.dumps([source, build.to_dict(), target.kind, target.capability], sort_keys=True)
    name = f"{Path(model).name or model}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    engine_dir = envs.cache_dir() / "engines" / name
    if not (engine_dir / ENGINE_JSON).is_file():
        logger.info("building %s into %s", model, engine_dir)
        build_engine(model, engine_dir, build, device)
    return engine_dir
