"""AsyncLLM: the asyncio face of the engine, for the server and for async applications.

    llm = AsyncLLM("engines/NAME")
    async for out in llm.generate("Hello", SamplingParams(max_tokens=32)):   # streams deltas
        print(out.outputs[0].delta_text, end="")
    final = await llm.generate_async("Hello", params)                       # waits for the end

The engine runs on its own thread (EngineLoop); outputs come back to the caller's event loop
through call_soon_threadsafe. Cancelling a stream (client gone, task cancelled) aborts the
request and frees its KV blocks at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from ingot.config import CacheConfig
from ingot.errors import EngineError
from ingot.runtime.engine import LLMEngine
from ingot.runtime.engine_loop import EngineLoop
from ingot.runtime.outputs import RequestOutput
from ingot.runtime.samples import make_sample_requests
from ingot.sampling_params import SamplingParams


class AsyncLLM:
    def __init__(self, engine_dir: str | Path, cache: CacheConfig | None = None, device: str | None = None,
                 engine: LLMEngine | None = None, draft_engine: str | Path | None = None) -> None:
        self.engine = engine or LLMEngine(engine_dir, cache, device=device, draft_engine=draft_engine)
        self.tokenizer = self.engine.tokenizer
        self.spec = self.engine.spec
        self._loop = EngineLoop(self.engine)
        self._samples: dict[str, list[str]] = {}  # request id -> its samples' engine request ids

    async def generate(self, prompt: str | list[int], params: SamplingParams | None = None,
                       request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        """Yield after every step that advanced this request; `outputs` holds the samples that
        changed (each with its index, cumulative text and delta). Raises RequestError at once for
        a prompt or parameters the engine cannot take."""
        if self._loop.error is not None:
            raise EngineError(f"the engine loop has stopped after an error: {self._loop.error!r}")
        requests = make_sample_requests(self.engine, prompt, params or SamplingParams(), request_id)
        parent = requests[0]
        parent_id = request_id or parent.request_id
        loop = asyncio.get_running_loop()
        outputs: asyncio.Queue[RequestOutput] = asyncio.Queue()
        remaining = {r.request_id for r in requests}
        self._loop.add(requests, lambda out: loop.call_soon_threadsafe(outputs.put_nowait, out))
        self._samples[parent_id] = sorted(remaining)
        try:
            while remaining:
                out = await outputs.get()
                if out.finished:
                    remaining.discard(out.request_id)
                yield RequestOutput(parent_id, parent.prompt, parent.prompt_token_ids, out.outputs,
                                    finished=not remaining, prompt_logprobs=parent.prompt_logprobs)
        finally:
            self._samples.pop(parent_id, None)
            if remaining:  # the consumer went away before the end
                self._loop.abort(sorted(remaining))

    async def generate_async(self, prompt: str | list[int], params: SamplingParams | None = None,
                             request_id: str | None = None) -> RequestOutput:
        """Run to completion; one RequestOutput holding every sample's final text."""
        finals = {}
        last = None
        async for out in self.generate(prompt, params, request_id):
            last = out
            for completion in out.outputs:
                finals[completion.index] = completion
        return RequestOutput(last.request_id, last.prompt, last.prompt_token_ids,
                             [finals[i] for i in sorted(finals)], finished=True, prompt_logprobs=last.prompt_logprobs)

    def abort(self, request_id: str) -> None:
        """Abort a request (all of its n samples) and free its KV blocks."""
        self._loop.abort(self._samples.get(request_id, [request_id]))

    def abort_all(self) -> None:
        """Abort every request in flight; their streams end with finish_reason "abort"."""
        self._loop.abort_all()

    def failure(self) -> str | None:
        """Why the engine can no longer serve (its loop stopped, or a worker rank died), or None."""
        if self._loop.error is not None:
            return f"the engine loop has stopped: {self._loop.error}"
        workers = getattr(self.engine, "workers", None)
        if workers is not None:
            try:
                workers.check_alive()
            except EngineError as exc:
                return str(exc)
        return None

    def stats(self):
        """The latest EngineStats snapshot (safe to read from any thread)."""
        return self.engine.stats

    def shutdown(self) -> None:
        self._loop.shutdown()
