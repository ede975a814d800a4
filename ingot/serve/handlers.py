"""The two generation endpoints: parse, check against the engine, run, answer (JSON or SSE)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import aclosing, suppress

from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ingot.errors import RequestError
from ingot.serve.admission import slots_of
from ingot.serve.errors import (APIError, bad_request, check_standard_json, from_request_error,
                                from_validation_error)
from ingot.serve.formats import ChatFormat, CompletionFormat, usage
from ingot.serve.generation import Job, collect, stream_outputs
from ingot.serve.protocol import ChatCompletionRequest, CompletionRequest, check_fits, check_text_fits
from ingot.serve.structured_fields import structured_output
from ingot.serve.tools import ToolCalling, ToolChatFormat

logger = logging.getLogger("ingot.serve")

CLIENT_CLOSED = 499  # nginx's "client closed request": recorded in metrics, never seen by the client


async def parse(model: type[BaseModel], request: Request):
    raw = await request.body()
    try:
        parsed = model.model_validate_json(raw)  # first: a NaN in a numeric field is refused naming the field
    except ValidationError as exc:
        raise from_validation_error(exc) from None
    check_standard_json(raw)
    return parsed


async def completions(state, request: Request) -> Response:
    arrival = time.perf_counter()
    req: CompletionRequest = await parse(CompletionRequest, request)
    served = state.model(req.model)
    llm = served.llm
    req.check_supported(state.limits)
    slots_of(request).hold(len(req.prompts()), "prompt")  # each prompt is a request in the engine
    params = _params(llm, req, req.max_tokens, req.logprobs, req.prompt_logprobs)
    tokenizer = llm.tokenizer

    def tokenized_jobs() -> list[Job]:
        jobs = []
        for prompt in req.prompts():
            ids = encode_text(llm, prompt, "prompt") if isinstance(prompt, str) else list(prompt)
            check_prompt(llm, ids, params.max_tokens, "prompt", "max_tokens")
            text = prompt if isinstance(prompt, str) else (
                tokenizer.decode(ids, skip_special_tokens=False) if req.echo else None)
            jobs.append(Job(ids, params, text))
        return jobs

    # a long prompt takes the tokenizer seconds: off the event loop, so /health and streams go on
    jobs = await run_in_threadpool(tokenized_jobs)
    fmt = CompletionFormat(tokenizer, req.model or served.name, req.logprobs, req.echo)
    return await _respond(state, llm, request, req, jobs, fmt, "prompt", arrival)


async def chat_completions(state, request: Request) -> Response:
    arrival = time.perf_counter()
    req: ChatCompletionRequest = await parse(ChatCompletionRequest, request)
    served = state.model(req.model)
    llm = served.llm
    req.check_supported(state.limits)
    tokenizer = llm.tokenizer
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else \
        json.dumps(tokenizer.chat_template or "")
    calling = ToolCalling.from_request(req, template)
    messages = [m.to_dict() for m in req.messages]
    tools = {} if calling is None else {"tools": req.tools}
    if calling is not None:
        messages = calling.messages(messages, template)
    def template_and_encode() -> list[int]:  # Tokenizer.encode_chat, with the length checked in between
        text = tokenizer.apply_chat_template(messages, req.add_generation_prompt, **tools)
        return encode_text(llm, text, "messages", add_special_tokens=False)  # the template wrote any BOS

    try:
        ids = await run_in_threadpool(template_and_encode)
    except RequestError as exc:
        raise from_request_error(exc, "messages") from None
    build = llm.spec.build
    # Without a limit the answer may use the rest of the context, as OpenAI's chat endpoint does.
    max_tokens = req.requested_max_tokens or max(build.max_seq_len - len(ids), 1)
    limit_param = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
    check_prompt(llm, ids, max_tokens, "messages", limit_param)
    forced = calling.structured() if calling is not None else None
    if forced is not None and structured_output(req) is not None:
        raise bad_request(f"tool_choice={req.tool_choice!r} forces the answer's shape; drop response_format "
                          "or the guided_* field", "tool_choice")
    jobs = [Job(ids, _params(llm, req, max_tokens, req.num_logprobs, structured=forced))]
    fmt = ChatFormat(tokenizer, req.model or served.name, req.num_logprobs)
    if calling is not None:
        fmt = ToolChatFormat(fmt, calling)
    return await _respond(state, llm, request, req, jobs, fmt, "messages", arrival)


def _params(llm, req, max_tokens: int, logprobs: int | None, prompt_logprobs: int | None = None,
            structured=None):
    try:
        params = req.sampling_params(max_tokens, logprobs, prompt_logprobs, structured)
    except RequestError as exc:
        raise from_request_error(exc) from None
    vocab = llm.spec.model.vocab_size
    bad = [t for t in params.stop_token_ids if not 0 <= t < vocab]
    if bad:
        raise bad_request(f"stop_token_ids {bad[:5]} are outside the vocabulary [0, {vocab})", "stop_token_ids")
    return params


def encode_text(llm, text: str, prompt_param: str, add_special_tokens: bool = True) -> list[int]:
    """Token ids of text, refused first (400) when it cannot fit in the engine; seconds for a long text:
    call it off the event loop."""
    check_text_fits(text, llm.tokenizer.max_token_chars, llm.spec.build, prompt_param)
    return llm.tokenizer.encode(text, add_special_tokens=add_special_tokens)


def check_prompt(llm, ids: list[int], max_tokens: int, prompt_param: str, limit_param: str) -> None:
    """The prompt's ids against llm's (an AsyncLLM's) vocabulary and envelope; APIError 400."""
    if not ids:
        raise bad_request("the prompt is empty: give at least one token", prompt_param)
    vocab = llm.spec.model.vocab_size
    bad = [t for t in ids if not 0 <= t < vocab]
    if bad:
        raise bad_request(f"prompt token ids {bad[:5]} are outside the vocabulary [0, {vocab})", prompt_param)
    try:
        check_fits(len(ids), max_tokens, llm.spec.build, prompt_param)
    except APIError as exc:
        exc.param = limit_param if exc.param == "max_tokens" else exc.param
        raise


async def _respond(state, llm, request: Request, req, jobs: list[Job], fmt, prompt_param: str,
                   arrival: float) -> Response:
    run = dict(metrics=state.metrics, request_id=fmt.id, prompt_param=prompt_param, arrival=arrival)
    if req.stream:
        events = _sse_events(llm, jobs, fmt, req.include_usage, run)
        return EventStream(events, media_type="text/event-stream",
                           headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    finals = await _unless_disconnected(request, collect(llm, jobs, **run))
    if finals is None:
        return Response(status_code=CLIENT_CLOSED)
    n = jobs[0].params.n
    choices = [fmt.choice(i, out, jobs[i // n]) for i, out in enumerate(finals)]
    prompt_tokens = sum(len(job.prompt_ids) for job in jobs)
    return JSONResponse(fmt.response(choices, usage(prompt_tokens, sum(len(o.token_ids) for o in finals))))


class EventStream(StreamingResponse):
    """A StreamingResponse that always closes its generator, even when the client left before the
    first chunk (Starlette then cancels the send loop and would leave the generator to the GC)."""

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _sse_events(llm, jobs: list[Job], fmt, include_usage: bool, run: dict):
    n = jobs[0].params.n
    sent: dict[int, int] = {}  # choice -> tokens already sent
    text_len: dict[int, int] = {}  # choice -> characters already sent (logprobs' text_offset)
    # The prompt's scores (echo with logprobs) are known only once the engine has computed it.
    waiting_for_scores = set(range(len(jobs) * n)) if fmt.scores_prompt else set()
    try:
        for index in range(len(jobs) * n):
            if index not in waiting_for_scores and (opening := fmt.opening(index, jobs[index // n])) is not None:
                text_len[index] = len(opening.get("text", ""))
                yield _sse(fmt.chunk([opening], with_usage_field=include_usage))
        async with aclosing(stream_outputs(llm, jobs, **run)) as outputs:
            async for index, out in outputs:
                if index in waiting_for_scores:
                    waiting_for_scores.discard(index)
                    opening = fmt.opening(index, jobs[index // n])
                    text_len[index] = len(opening["text"])
                    yield _sse(fmt.chunk([opening], with_usage_field=include_usage))
                start, sent[index] = sent.get(index, 0), len(out.token_ids)
                new_ids = out.token_ids[start:]
                # Text held back (it may become a stop string) has no chunk yet, unless logprobs are due.
                if not (out.delta_text or out.finished or (fmt.num_logprobs is not None and new_ids)):
                    continue
                logprobs = out.logprobs[start:len(out.token_ids)] if out.logprobs is not None else None
                offset = text_len.get(index, 0)
                text_len[index] = offset + len(out.delta_text)
                choice = fmt.delta(index, out.delta_text, new_ids, logprobs, offset, out.finish_reason,
                                   out.stop_reason)
                yield _sse(fmt.chunk([choice], with_usage_field=include_usage))
        if include_usage:
            prompt_tokens = sum(len(job.prompt_ids) for job in jobs)
            yield _sse(fmt.chunk([], usage(prompt_tokens, sum(sent.values())), with_usage_field=True))
    except APIError as exc:  # the status line is already sent: the error becomes an event
        yield exc.sse()
    except Exception:
        logger.exception("stream failed")
        yield APIError(500, "internal error while streaming; see the server log", type="server_error").sse()
    yield "data: [DONE]\n\n"


async def _unless_disconnected(request: Request, work_coro):
    """Await work_coro, or cancel it (aborting its requests) if the client disconnects first."""
    work = asyncio.ensure_future(work_coro)
    watch = asyncio.ensure_future(_until_disconnected(request))
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # the handler itself was cancelled (server shutting down)
        work.cancel()
        raise
    finally:
        watch.cancel()
    if work.done():
        return work.result()
    work.cancel()
    with suppress(asyncio.CancelledError):
        await work
    return None


async def _until_disconnected(request: Request) -> None:
    # The body has been read, so the next ASGI message is http.disconnect (when the client leaves).
    while (await request.receive())["type"] != "http.disconnect":
        pass
