"""The HTTP app: OpenAI routes, health and metrics, and the sizing planner's page under /plan.

    POST /v1/completions, /v1/chat/completions      generation (JSON, or SSE with stream=true)
    GET  /v1/models[/{model}]                       the served models: NAME (its latest version) and NAME/VERSION
    POST /tokenize  /detokenize   GET /tokenizer_info   the served tokenizer (vLLM's routes; tokenize.py)
    GET  /health  /version  /metrics                liveness, versions, Prometheus text
    GET  /plan/...                                  the planner (ingot.plan.web), mounted
    /v2/...                                         KServe v2 / Triton (kserve_http.py); gRPC: kserve_grpc.py

The models (models.py: one engine, or a repository's) serve every request; the request's `model`
field picks one (a name, or NAME/VERSION). The Gate middleware answers 401 before a body is read;
it reads every POST body whole first (at most limits.max_body_bytes, within limits.read_timeout:
413 / 408), and only then does a generation request take a --max-queue slot (429; a handler holds
one more per extra prompt: admission.py), so that clients that send headers and then stall cannot
hold every slot. It counts every response by route and status (499: the client went away before
its body was read). Heads (request line and headers) are guarded before the app sees them:
http_protocol.py.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

import ingot
from ingot.serve import handlers, kserve_http
from ingot.serve.admission import SCOPE_KEY, QueueSlots
from ingot.serve.errors import APIError
from ingot.serve.limits import ServeLimits, flag
from ingot.serve.metrics import CONTENT_TYPE, ServerMetrics
from ingot.serve.models import ModelError, ModelRegistry, ServedModel

GENERATION_ROUTES = ("/v1/completions", "/v1/chat/completions")
TOKENIZER_ROUTES = ("/tokenize", "/detokenize", "/tokenizer_info")
KNOWN_ROUTES = (*GENERATION_ROUTES, "/v1/models", *TOKENIZER_ROUTES, "/health", "/version", "/metrics")
V2_GENERATION_SUFFIXES = ("/infer", "/generate", "/generate_stream")

logger = logging.getLogger("ingot.serve")


@dataclass
class ServerState:
    models: ModelRegistry
    api_key: str | None = None
    max_queue: int | None = None  # generation requests in flight before 429; None: no limit
    limits: ServeLimits = field(default_factory=ServeLimits)
    metrics_public: bool = False  # /metrics without the key (it shows traffic and KV-cache use)
    draining: bool = False  # shutting down: no new generation, /health 503, open requests finish
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    started: int = field(default_factory=lambda: int(time.time()))

    def count_response(self, path: str, status: int) -> None:
        """Every answer the server sends, by route and status: the app's (the Gate) and those the HTTP
        protocol makes itself (431, 408, 400 for a request that is not HTTP: http_protocol.py)."""
        self.metrics.http_requests.labels(route=_route_label(path), status=str(status)).inc()

    def model(self, model: str | None) -> ServedModel:
        """The engine the OpenAI `model` field names; APIError 404 (or 400) naming what is served."""
        try:
            return self.models.resolve(model)
        except ModelError as exc:
            raise APIError(exc.status, exc.message, "model", "model_not_found") from None

    def model_cards(self) -> list[dict]:
        """One card per model name (its latest loaded version), and one per NAME/VERSION where a model has
        several loaded versions to choose from (NAME/VERSION is accepted for any loaded version)."""
        cards = []
        for name in sorted({m.name for m in self.models.loaded()}):
            cards.append(_card(name, self.models.get(name)))
            versions = self.models.versions(name)
            if len(versions) > 1:
                cards += [_card(f"{name}/{v}", self.models.get(name, v), parent=name) for v in versions]
        return cards


def _card(model_id: str, served: ServedModel, parent: str | None = None) -> dict:
    return {"id": model_id, "object": "model", "created": served.loaded_at, "owned_by": "ingot", "root": served.key,
            "parent": parent, "max_model_len": served.llm.spec.build.max_seq_len}


class Gate:
    """Pure ASGI (Starlette's BaseHTTPMiddleware would break disconnect detection in streams)."""

    def __init__(self, app, state: ServerState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, status = scope["path"], [500]

        async def send_and_record(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self._route(scope, receive, send_and_record, path, status)
        finally:
            self.state.count_response(path, status[0])

    async def _route(self, scope, receive, send, path: str, status: list[int]) -> None:
        kserve = path.startswith("/v2/")

        async def refuse(error: APIError) -> None:
            answer = kserve_http.error_response(error.status, error.message) if kserve else error.response()
            await answer(scope, receive, send)

        guarded = path.startswith(("/v1/", "/v2/models/", "/v2/repository/")) or path in TOKENIZER_ROUTES or (
            path == "/metrics" and not self.state.metrics_public)
        if guarded and not self._authorized(scope):
            return await refuse(APIError(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                                         code="invalid_api_key"))
        if scope["method"] != "POST":
            return await self.app(scope, receive, send)
        generation = path in GENERATION_ROUTES or (kserve and path.endswith(V2_GENERATION_SUFFIXES))
        if generation and self.state.draining:
            return await refuse(APIError(503, "the server is shutting down; send the request to another replica",
                                         type="server_error", code="shutting_down"))
        try:
            body = await self._read_body(scope, receive)
        except APIError as error:
            return await refuse(error)
        if body is None:  # the client went away mid-upload: nothing to answer, nothing to log as an error
            client = scope.get("client") or ("-",)
            logger.info("499 %s: the client closed the connection before sending its whole %s %s body",
                        client[0], scope["method"], path)
            status[0] = 499
            return None
        receive = _replaying(body, receive)
        if not generation:
            return await self.app(scope, receive, send)
        slots = scope[SCOPE_KEY] = QueueSlots(self.state)
        try:
            slots.hold(1)
        except APIError as error:
            return await refuse(error)
        try:
            await self.app(scope, receive, send)
        finally:
            slots.release()

    async def _read_body(self, scope, receive) -> bytes | None:
        """The request body, or None if the client disconnected; APIError 413 / 408 past the limits."""
        limit, timeout = self.state.limits.max_body_bytes, self.state.limits.read_timeout
        too_large = APIError(413, f"the request body is over this server's limit of {limit} bytes "
                                  f"({flag('max_body_bytes')}); send a shorter prompt", code="request_too_large")
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            raise too_large
        deadline = time.monotonic() + timeout
        chunks, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.0))
            except asyncio.TimeoutError:
                raise APIError(408, f"the request body did not arrive within {timeout:g} s ({flag('read_timeout')})",
                               code="request_timeout") from None
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _authorized(self, scope) -> bool:
        if self.state.api_key is None:
            return True
        # bytes against bytes: a non-ASCII key arrives as its UTF-8 bytes
        header = dict(scope["headers"]).get(b"authorization", b"")
        return hmac.compare_digest(header, b"Bearer " + self.state.api_key.encode("utf-8"))


def _route_label(path: str) -> str:
    """A bounded set of labels: known routes as they are, v2 model routes without the model's name."""
    if path in KNOWN_ROUTES:
        return path
    if path.startswith("/plan"):
        return "/plan"
    if path.startswith("/v2/repository/"):
        return "/v2/repository/" + path.rsplit("/", 1)[-1] if path.endswith(("/index", "/load", "/unload")) \
            else "other"
    if path.startswith("/v2/models/"):
        last = path.rsplit("/", 1)[-1]
        return f"/v2/models/{last}" if last in ("infer", "generate", "generate_stream", "ready", "config") \
            else "/v2/models"
    return path if path in ("/v2", "/v2/health/live", "/v2/health/ready") else "other"


def _replaying(body: bytes, receive):
    """An ASGI receive that hands the app the body read already, then the client's later messages
    (a disconnect while the answer streams)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return replay


def build_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="ingot", version=ingot.__version__, docs_url=None, redoc_url=None)
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)  # logged by Starlette, answered in OpenAI's shape
    _add_openai_routes(app, state)
    _add_tokenizer_routes(app, state)
    _add_service_routes(app, state)
    kserve_http.add_routes(app, state)
    _mount_planner(app)
    app.add_middleware(Gate, state=state)
    return app


async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return exc.response()


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    if request.url.path.startswith("/v2"):
        return kserve_http.error_response(500, f"internal error: {type(exc).__name__}: {exc}; see the server log")
    return APIError(500, f"internal error: {type(exc).__name__}: {exc}; see the server log",
                    type="server_error").response()


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if request.url.path.startswith("/v2"):
        return kserve_http.error_response(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", type=kind).response()


def _add_openai_routes(app: FastAPI, state: ServerState) -> None:
    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await handlers.completions(state, request)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await handlers.chat_completions(state, request)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": state.model_cards()}

    @app.get("/v1/models/{model:path}")
    async def model(model: str) -> dict:
        served = state.model(model)
        return _card(model, served, parent=served.name if model != served.name else None)


def _add_tokenizer_routes(app: FastAPI, state: ServerState) -> None:
    from ingot.serve import tokenize

    @app.get("/tokenizer_info")
    async def tokenizer_info(model: str | None = None) -> dict:
        return tokenize.tokenizer_info(state.model(model))

    # long texts and token lists: off the event loop, so that /health and streams go on
    @app.post("/tokenize")
    async def tokenize_text(request: Request) -> dict:
        return await run_in_threadpool(tokenize.tokenize, state,
                                       await handlers.parse(tokenize.TokenizeRequest, request))

    @app.post("/detokenize")
    async def detokenize(request: Request) -> dict:
        return await run_in_threadpool(tokenize.detokenize, state,
                                       await handlers.parse(tokenize.DetokenizeRequest, request))


def _add_service_routes(app: FastAPI, state: ServerState) -> None:
    @app.get("/health")
    async def health() -> Response:
        failure = state.models.failure()
        if failure is not None:
            return APIError(503, failure, type="server_error").response()
        if state.draining:
            return APIError(503, "shutting down", type="server_error", code="shutting_down").response()
        return JSONResponse({"status": "ok"})

    @app.get("/version")
    async def version() -> dict:
        import torch

        from ingot.engine_format import FORMAT_VERSION

        return {"version": ingot.__version__, "torch": torch.__version__, "engine_format": FORMAT_VERSION}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(state.models.samples()), media_type=CONTENT_TYPE)


def _mount_planner(app: FastAPI) -> None:
    from ingot.plan.web import make_plan_app

    plan = make_plan_app("/plan")

    @app.api_route("/plan", methods=["GET", "HEAD"])
    @app.api_route("/plan/{rest:path}", methods=["GET", "HEAD"])
    async def planner(request: Request) -> Response:
        query = f"?{request.url.query}" if request.url.query else ""
        answer = plan(request.method, request.url.path + query)
        return Response(answer.body, answer.status, headers=dict(answer.headers), media_type=answer.content_type)
