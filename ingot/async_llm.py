"""AsyncLLM: the asyncio face of the engine, for the server and for async applications.

    llm = AsyncLLM("engines/NAME")
    async for out in llm.generate("Hello", SamplingParams(max_tokens=32)):   # streams deltas
        print(out.outputs[0].delta_text, end="")
    final = await llm.generate_async("Hello", params)                       # waits for the end

The engine core runs in a process of its own (ingot/runtime/core_process.py), or, with
in_process=True or an engine object given, on a thread of this one (ingot/runtime/engine_loop.py).
Either way this side tokenizes and validates (a bad request raises RequestError at once), and the
core sends one message per step with every request's delta; a background thread hands each event
loop its share in one call. Each generate() adds its samples' deltas up; a consumer slower than
the engine gets the deltas of several steps merged into one output instead of a growing queue.
Cancelling a stream (client gone, task cancelled) aborts the request and frees its KV blocks at once.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from pathlib import Path

from ingot.config import CacheConfig
from ingot.engine_format import read_spec
from ingot.errors import EngineError, RequestError
from ingot.runtime.core_records import AddRequest, OutputDelta, StepMessage
from ingot.runtime.outputs import CompletionOutput, RequestOutput
from ingot.runtime.samples import sample_ids
from ingot.runtime.validation import check_prompt_kind, validate_request
from ingot.sampling_params import SamplingParams


class AsyncLLM:
    def __init__(self, engine_dir: str | Path, cache: CacheConfig | None = None, device: str | None = None,
                 engine=None, draft_engine: str | Path | None = None, in_process: bool = False) -> None:
        self._streams: dict[str, _Stream] = {}  # engine request id (a sample's) -> its generate() call
        self._requests: dict[str, _Stream] = {}  # request id -> its generate() call
        self._ids = itertools.count()
        self._shut_down = False
        if engine is not None or in_process:
            self._core = self._start_loop(engine_dir, cache, device, engine, draft_engine)
        else:
            self._core = self._start_process(engine_dir, cache, device, draft_engine)

    def _start_loop(self, engine_dir, cache, device, engine, draft_engine):
        from ingot.runtime.engine import LLMEngine
        from ingot.runtime.engine_loop import EngineLoop

        engine = engine or LLMEngine(engine_dir, cache, device=device, draft_engine=draft_engine)
        self.engine_dir, self.spec, self.tokenizer = engine.engine_dir, engine.spec, engine.tokenizer
        return EngineLoop(engine, self._on_message, self._on_failure)

    def _start_process(self, engine_dir, cache, device, draft_engine):
        from ingot.runtime.core_process import CoreConfig, CoreProcess, log_settings
        from ingot.tokenizer import Tokenizer

        config = CoreConfig(str(engine_dir), cache, device, None if draft_engine is None else str(draft_engine),
                            *log_settings())
        core = CoreProcess(config, self._on_message, self._on_failure)  # loads the engine while we read its files
        try:
            self.engine_dir = Path(engine_dir)
            self.spec = read_spec(engine_dir)
            has_tokenizer = (self.engine_dir / "tokenizer.json").is_file()
            self.tokenizer = Tokenizer.from_dir(engine_dir) if has_tokenizer else None
            core.wait_ready()
        except BaseException:
            core.shutdown()
            raise
        return core

    # ---- requests ----

    async def generate(self, prompt: str | list[int], params: SamplingParams | None = None,
                       request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        """Yield whenever samples of this request advanced; `outputs` holds the samples that changed
        (each with its index, cumulative text and ids, and the delta since the previous yield).
        Raises RequestError at once for a prompt or parameters the engine cannot take."""
        params = params or SamplingParams()
        add, stream = self._prepare(prompt, params, request_id)
        self._requests[stream.request_id] = stream
        for sample_id in stream.ids:
            self._streams[sample_id] = stream
        try:
            failure = self.failure()
            if failure is not None:
                raise EngineError(failure)
            if self._shut_down:  # e.g. its model was unloaded after the server picked it for this request
                raise EngineError("this engine was shut down (its model was unloaded); send the request again")
            self._core.add([add])
            while True:
                out = await stream.next_output()
                yield out
                if out.finished:
                    return
        finally:
            self._requests.pop(stream.request_id, None)
            for sample_id in stream.ids:
                self._streams.pop(sample_id, None)
            if stream.unfinished and self._core.failure() is None:  # the consumer went away before the end
                self._core.abort(sorted(stream.unfinished))

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

    def _prepare(self, prompt: str | list[int], params: SamplingParams, request_id: str | None):
        prompt_text = prompt if isinstance(prompt, str) else None
        check_prompt_kind(self.engine_dir, self.tokenizer is not None, prompt_text is not None, params)
        token_ids = self.tokenizer.encode(prompt) if prompt_text is not None else list(prompt)
        validate_request(self.spec, token_ids, params)
        request_id = request_id if request_id is not None else f"req-{next(self._ids)}"
        ids = sample_ids(request_id, params.n)
        if request_id in self._requests or any(i in self._streams for i in ids):
            raise RequestError(f"request_id {request_id!r} is already in use")
        stream = _Stream(request_id, prompt_text, token_ids, ids, params.logprobs is not None)
        return AddRequest(request_id, token_ids, params), stream

    def abort(self, request_id: str) -> None:
        """Abort a request (all of its n samples) and free its KV blocks."""
        stream = self._requests.get(request_id)
        self._core.abort(stream.ids if stream is not None else [request_id])

    def abort_all(self) -> None:
        """Abort every request in flight; their streams end with finish_reason "abort"."""
        self._core.abort(None)

    def failure(self) -> str | None:
        """Why the engine can no longer serve (its core stopped, or a worker rank died), or None."""
        return self._core.failure()

    def stats(self):
        """The latest EngineStats snapshot (safe to read from any thread)."""
        return self._core.stats

    @property
    def num_requests(self) -> int:
        """generate() calls in flight."""
        return len(self._requests)

    @property
    def core_pid(self) -> int | None:
        """The engine core's process id; None when the engine runs on a thread of this process."""
        return getattr(self._core, "pid", None)

    def shutdown(self) -> None:
        self._shut_down = True
        self._core.shutdown()

    # ---- from the core (on its thread) to the event loops ----

    def _on_message(self, message: StepMessage) -> None:
        by_loop: dict = {}
        for packed in message.deltas:
            stream = self._streams.get(packed[0])
            if stream is not None:
                by_loop.setdefault(stream.loop, []).append((stream, packed))
        for loop, items in by_loop.items():
            _call_soon(loop, _deliver, items)

    def _on_failure(self) -> None:
        """The core stopped: end every stream with an abort (the server turns it into an error event)."""
        by_loop: dict = {}
        for stream in set(list(self._streams.values())):
            by_loop.setdefault(stream.loop, []).extend(
                (stream, (sample_id, [], "", "abort")) for sample_id in stream.ids)
        for loop, items in by_loop.items():
            _call_soon(loop, _deliver, items)


def _call_soon(loop: asyncio.AbstractEventLoop, callback, items) -> None:
    try:
        loop.call_soon_threadsafe(callback, items)
    except RuntimeError:  # that event loop has closed: nobody is waiting there
        pass


def _deliver(items: list[tuple]) -> None:
    for stream, packed in items:
        stream.add(OutputDelta(*packed))


class _Sample:
    """One sample's output so far, and what is new since its stream last yielded."""

    __slots__ = ("text", "token_ids", "logprobs", "finish_reason", "stop_reason", "new_text", "new_ids")

    def __init__(self, logprobs: bool) -> None:
        self.text, self.token_ids = "", []
        self.logprobs: list | None = [] if logprobs else None
        self.finish_reason = self.stop_reason = None
        self.new_text, self.new_ids = [], []


class _Stream:
    """One generate() call: adds up its samples' deltas (on its event loop) and hands over what
    changed when the consumer asks."""

    def __init__(self, request_id: str, prompt: str | None, prompt_ids: list[int], ids: list[str],
                 logprobs: bool) -> None:
        self.request_id, self.prompt, self.prompt_ids, self.ids = request_id, prompt, prompt_ids, ids
        self.loop = asyncio.get_running_loop()
        self.index = {sample_id: i for i, sample_id in enumerate(ids)}
        self.samples = [_Sample(logprobs) for _ in ids]
        self.unfinished = set(ids)
        self.changed: set[int] = set()
        self.prompt_logprobs = None
        self._ready = asyncio.Event()

    def add(self, delta: OutputDelta) -> None:
        index = self.index[delta.request_id]
        sample = self.samples[index]
        if sample.finish_reason is not None:
            return  # e.g. the abort of a sample that had already finished
        sample.text += delta.text
        sample.token_ids += delta.token_ids
        sample.new_text.append(delta.text)
        sample.new_ids += delta.token_ids
        if delta.logprobs is not None and sample.logprobs is not None:
            sample.logprobs += delta.logprobs
        if delta.prompt_logprobs is not None and self.prompt_logprobs is None:
            self.prompt_logprobs = delta.prompt_logprobs
        if delta.finish_reason is not None:
            sample.finish_reason, sample.stop_reason = delta.finish_reason, delta.stop_reason
            self.unfinished.discard(delta.request_id)
        self.changed.add(index)
        self._ready.set()

    async def next_output(self) -> RequestOutput:
        await self._ready.wait()
        self._ready.clear()
        outputs = [self._take(i) for i in sorted(self.changed)]
        self.changed.clear()
        return RequestOutput(self.request_id, self.prompt, self.prompt_ids, outputs, finished=not self.unfinished,
                             prompt_logprobs=self.prompt_logprobs)

    def _take(self, index: int) -> CompletionOutput:
        sample = self.samples[index]
        delta_text, delta_ids = "".join(sample.new_text), sample.new_ids
        sample.new_text, sample.new_ids = [], []
        logprobs = list(sample.logprobs) if sample.logprobs is not None else None
        return CompletionOutput(index, sample.text, list(sample.token_ids), sample.finish_reason, sample.stop_reason,
                                logprobs, delta_text, delta_ids)
