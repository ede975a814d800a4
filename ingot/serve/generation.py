"""Run the prompts of one HTTP request on the engine, as one merged stream of sample outputs.

A request holds one or more prompts (a /v1/completions batch) of n samples each; choice
`j * n + i` is sample i of prompt j, as in OpenAI's API. Closing the stream (the client went
away, the handler was cancelled) cancels every prompt's generator, which aborts its engine
requests and frees their KV blocks at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field

from ingot.errors import EngineError, RequestError
from ingot.runtime.outputs import CompletionOutput
from ingot.sampling_params import SamplingParams
from ingot.serve.errors import APIError, from_request_error
from ingot.serve.metrics import ServerMetrics


@dataclass
class Job:
    """One prompt of a request, already tokenized and checked against the engine's envelope."""

    prompt_ids: list[int]
    params: SamplingParams
    prompt_text: str | None = None
    # Filled from the engine's outputs when params.prompt_logprobs is set: per prompt token,
    # None for the first, then {id: logprob} (see RequestOutput.prompt_logprobs).
    prompt_logprobs: list | None = None


@dataclass
class _Timing:
    """When the request arrived and, per choice, when its first token came (TTFT / TPOT)."""

    arrival: float
    first: dict[int, float] = field(default_factory=dict)


async def stream_outputs(llm, jobs: list[Job], metrics: ServerMetrics, request_id: str, prompt_param: str = "prompt",
                         arrival: float | None = None) -> AsyncIterator[tuple[int, CompletionOutput]]:
    """Yield (choice index, output) as samples advance; outputs carry cumulative text and ids."""
    timing = _Timing(time.perf_counter() if arrival is None else arrival)
    if len(jobs) == 1:
        async with aclosing(_one_job(llm, jobs[0], 0, f"{request_id}-0", metrics, timing, prompt_param)) as one:
            async for item in one:
                yield item
        return
    queue: asyncio.Queue = asyncio.Queue()
    tasks = [asyncio.create_task(_pump(_one_job(llm, job, j * job.params.n, f"{request_id}-{j}", metrics, timing,
                                                prompt_param), queue)) for j, job in enumerate(jobs)]
    try:
        for _ in tasks:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
    finally:
        for task in tasks:  # the consumer left early or one prompt failed: stop the others too
            task.cancel()


async def _pump(source: AsyncIterator, queue: asyncio.Queue) -> None:
    try:
        async with aclosing(source):
            async for item in source:
                queue.put_nowait(item)
    except Exception as exc:  # noqa: BLE001 - handed to the consumer, which raises it
        queue.put_nowait(exc)
    queue.put_nowait(None)


async def _one_job(llm, job: Job, base: int, request_id: str, metrics: ServerMetrics, timing: _Timing,
                   prompt_param: str) -> AsyncIterator[tuple[int, CompletionOutput]]:
    unfinished = set(range(base, base + job.params.n))
    # aclosing: leaving early (client gone) closes the engine's stream now, which aborts the request.
    try:
        async with aclosing(llm.generate(job.prompt_ids, job.params, request_id=request_id)) as outputs:
            async for out in outputs:
                if out.prompt_logprobs is not None:
                    job.prompt_logprobs = out.prompt_logprobs
                for sample in out.outputs:
                    _observe(metrics, timing, base + sample.index, sample)
                    if sample.finished:
                        unfinished.discard(base + sample.index)
                    if sample.finish_reason == "abort":  # the server is stopping, or the engine failed
                        yield base + sample.index, sample  # a stream's last chunk says finish_reason "abort"
                        raise APIError(503, "this request was stopped before it finished: the server is shutting "
                                       "down or its engine stopped (see the server log); retry it",
                                       type="server_error", code="engine_stopped")
                    yield base + sample.index, sample
    except RequestError as exc:
        unfinished.clear()  # refused before it started: a 400, not an abort
        raise from_request_error(exc, prompt_param) from exc
    except EngineError as exc:
        unfinished.clear()
        raise APIError(503, str(exc), type="server_error", code="engine_stopped") from exc
    finally:
        if unfinished:  # closed early: the client left or the server is stopping
            metrics.finished.labels(reason="abort").inc(len(unfinished))


def _observe(metrics: ServerMetrics, timing: _Timing, choice: int, sample: CompletionOutput) -> None:
    now = time.perf_counter()
    if sample.token_ids and choice not in timing.first:
        timing.first[choice] = now
    if sample.finished:
        first = timing.first.get(choice)
        metrics.observe_sequence(None if first is None else first - timing.arrival, now - timing.arrival,
                                 len(sample.token_ids), sample.finish_reason)


async def collect(llm, jobs: list[Job], metrics: ServerMetrics, request_id: str, prompt_param: str = "prompt",
                  arrival: float | None = None) -> list[CompletionOutput]:
    """Run to the end; the final output of every choice, in choice order."""
    finals: dict[int, CompletionOutput] = {}
    async with aclosing(stream_outputs(llm, jobs, metrics, request_id, prompt_param, arrival)) as outputs:
        async for index, sample in outputs:
            finals[index] = sample
    return [finals[i] for i in sorted(finals)]
