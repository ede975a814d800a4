"""KServe v2 / Triton over HTTP, beside the OpenAI routes on the same app and engine.

    GET  /v2/health/live  /v2/health/ready  /v2                   server liveness, readiness, metadata
    GET  /v2/models/{m}[/versions/{v}][/ready|/config]           model metadata, readiness, configuration
    POST /v2/models/{m}[/versions/{v}]/infer                     tensors in, text_output out (JSON or binary)
    POST /v2/models/{m}[/versions/{v}]/generate[_stream]         Triton's generate extension (JSON; SSE)
    POST /v2/repository/index   /v2/repository/models/{m}/load|unload   Triton's model repository extension

Without a version, a model route uses the model's highest loaded version. Errors are KServe's
`{"error": "..."}`: 400 for a malformed request or tensor or a failed load, 404 for an unknown (or
unloaded) model or version, 503 while the engine cannot serve. Over HTTP, infer answers once with the whole
text (a `stream` input is honoured by generate_stream and by gRPC's ModelStreamInfer).
"""

from __future__ import annotations

import itertools
import json
from contextlib import aclosing

import numpy as np
from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response

from ingot.serve import kserve_model as model
from ingot.serve.admission import slots_of
from ingot.serve.errors import loads_json
from ingot.serve.handlers import EventStream
from ingot.serve.kserve_tensors import HEADER_LENGTH, KServeError, bad, decode_request, encode_response

_ids = itertools.count()


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def add_routes(app: FastAPI, state) -> None:
    app.add_exception_handler(KServeError, _kserve_error)

    @app.get("/v2/health/live")
    async def live() -> Response:
        return Response(status_code=200)

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        return Response(status_code=200 if model.ready(state) else 503)

    @app.get("/v2")
    async def server_metadata() -> dict:
        return model.server_metadata()

    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        _add_model_routes(app, state, prefix)
    _add_repository_routes(app, state)


async def _kserve_error(request: Request, exc: KServeError) -> JSONResponse:
    return error_response(exc.status, exc.message)


def _add_model_routes(app: FastAPI, state, prefix: str) -> None:
    @app.get(prefix)
    async def metadata(name: str, version: str | None = None) -> dict:
        return model.model_metadata(state, model.resolve(state, name, version))

    @app.get(prefix + "/ready")
    async def model_ready(name: str, version: str | None = None) -> Response:
        served = model.resolve(state, name, version)
        return Response(status_code=200 if model.ready(state, served) else 503)

    @app.get(prefix + "/config")
    async def config(name: str, version: str | None = None) -> dict:
        return model.model_config(model.resolve(state, name, version))

    @app.post(prefix + "/infer")
    async def infer(name: str, request: Request, version: str | None = None) -> Response:
        return await _infer(state, model.resolve(state, name, version), request)

    @app.post(prefix + "/generate")
    async def generate(name: str, request: Request, version: str | None = None) -> Response:
        return await _generate(state, model.resolve(state, name, version), request)

    @app.post(prefix + "/generate_stream")
    async def generate_stream(name: str, request: Request, version: str | None = None) -> Response:
        return await _generate_stream(state, model.resolve(state, name, version), request)


def _add_repository_routes(app: FastAPI, state) -> None:
    @app.post("/v2/repository/index")
    async def index(request: Request) -> JSONResponse:
        body = await _json_object(request)
        return JSONResponse(state.models.index(ready_only=bool(body.get("ready", False))))

    @app.post("/v2/repository/models/{name}/load")
    async def load(name: str, request: Request) -> Response:
        model.check_repository_action(state, "load", (await _json_object(request)).get("parameters") or {})
        await _repository_action(state.models.load(name))
        return JSONResponse({})

    @app.post("/v2/repository/models/{name}/unload")
    async def unload(name: str, request: Request) -> Response:
        model.check_repository_action(state, "unload", (await _json_object(request)).get("parameters") or {})
        await _repository_action(state.models.unload(name))
        return JSONResponse({})


async def _repository_action(action) -> None:
    from ingot.serve.models import ModelError

    try:
        await action
    except ModelError as exc:
        raise KServeError(exc.status, exc.message) from None


async def _json_object(request: Request) -> dict:
    """The body as a JSON object; an empty body is {} (tritonclient sends none for the index)."""
    raw = await request.body()
    try:
        body = loads_json(raw) if raw.strip() else {}
    except ValueError as exc:  # not JSON, not UTF-8, or NaN / Infinity
        raise bad(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict) or not isinstance(body.get("parameters", {}), dict):
        raise bad('the request body must be a JSON object, with "parameters" an object if given')
    return body


async def _infer(state, served, request: Request) -> Response:
    infer = decode_request(await request.body(), request.headers.get(HEADER_LENGTH))
    rows = model.rows_from_inputs(infer.inputs)
    model.admit_rows(state, slots_of(request), rows)
    inference = model.Inference(state, served, len(rows))
    error = None
    try:
        texts = await model.generate_texts(state, served, rows, f"v2-{next(_ids)}")
        inference.first_response()
        outputs = {"text_output": _bytes_column(texts)}
        header = {"model_name": served.name, "model_version": served.version,
                  **({"id": infer.id} if infer.id else {})}
        body, header_length = encode_response(header, outputs, infer.outputs,
                                              bool(infer.parameters.get("binary_data_output", False)))
    except BaseException as exc:
        error = exc
        raise
    finally:
        inference.done(error)
    if header_length is None:
        return Response(body, media_type="application/json")
    return Response(body, media_type="application/octet-stream", headers={"Inference-Header-Content-Length":
                                                                          str(header_length)})


def _bytes_column(texts: list[str]) -> np.ndarray:
    array = np.empty((len(texts), 1), dtype=object)
    array[:, 0] = [t.encode("utf-8") for t in texts]
    return array


async def _json_rows(request: Request) -> tuple[dict, list[model.Row]]:
    try:
        body = loads_json(await request.body())
    except ValueError as exc:  # not JSON, not UTF-8, or NaN / Infinity
        raise bad(f"the request body is not valid JSON: {exc}") from None
    return body, model.rows_from_json(body)


async def _generate(state, served, request: Request) -> Response:
    body, rows = await _json_rows(request)
    model.admit_rows(state, slots_of(request), rows)
    inference = model.Inference(state, served, len(rows))
    error = None
    try:
        texts = await model.generate_texts(state, served, rows, f"v2-{next(_ids)}")
        inference.first_response()
    except BaseException as exc:
        error = exc
        raise
    finally:
        inference.done(error)
    answer = {"model_name": served.name, "model_version": served.version,
              "text_output": texts[0] if len(texts) == 1 else texts}
    if isinstance(body.get("id"), str):
        answer["id"] = body["id"]
    return JSONResponse(answer)


async def _generate_stream(state, served, request: Request) -> Response:
    _, rows = await _json_rows(request)
    if len(rows) != 1:
        raise bad("generate_stream takes one prompt: give 'text_input' as one string")
    return EventStream(_events(state, served, rows[0]), media_type="text/event-stream",
                       headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _events(state, served, row: model.Row):
    inference, error = model.Inference(state, served), None
    try:
        async with aclosing(model.stream_text(state, served, row, f"v2-{next(_ids)}")) as deltas:
            async for delta, _ in deltas:
                inference.first_response()
                yield _sse({"model_name": served.name, "model_version": served.version, "text_output": delta})
    except KServeError as exc:  # the status line is sent already: the error becomes an event
        error = exc
        yield _sse({"error": exc.message})
    except BaseException as exc:  # the client went away (GeneratorExit) or the server is stopping
        error = exc
        raise
    finally:
        inference.done(error)


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
