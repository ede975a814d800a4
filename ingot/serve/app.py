"""The HTTP app: OpenAI routes, health and metrics, and the sizing planner's page under /plan.

    POST /v1/completions, /v1/chat/completions      generation (JSON, or SSE with stream=true)
    GET  /v1/models[/{model}]                       the one served model
    POST /tokenize  /detokenize   GET /tokenizer_info   the served tokenizer (vLLM's routes; tokenize.py)
    GET  /health  /version  /metrics                liveness, versions, Prometheus text
    GET  /plan/...                                  the planner (ingot.plan.web), mounted

One AsyncLLM (one engine loop) serves every request. The Gate middleware answers 401 and 429
before a body is read, and counts every response by route and status.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

import ingot
from ingot.serve import handlers
from ingot.serve.errors import APIError
from ingot.serve.metrics import CONTENT_TYPE, ServerMetrics

GENERATION_ROUTES = ("/v1/completions", "/v1/chat/completions")
TOKENIZER_ROUTES = ("/tokenize", "/detokenize", "/tokenizer_info")
KNOWN_ROUTES = (*GENERATION_ROUTES, "/v1/models", *TOKENIZER_ROUTES, "/health", "/version", "/metrics")


@dataclass
class ServerState:
    llm: object  # AsyncLLM
    model_name: str
    api_key: str | None = None
    max_queue: int | None = None  # generation requests in flight before 429; None: no limit
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    started: int = field(default_factory=lambda: int(time.time()))

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            raise APIError(404, f"the model {model!r} does not exist here; this server serves {self.model_name!r}",
                           "model", "model_not_found")

    def model_card(self) -> dict:
        return {"id": self.model_name, "object": "model", "created": self.started, "owned_by": "ingot",
                "max_model_len": self.llm.spec.build.max_seq_len}


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
            await self._route(scope, receive, send_and_record, path)
        finally:
            route = path if path in KNOWN_ROUTES else "/plan" if path.startswith("/plan") else "other"
            self.state.metrics.http_requests.inc(route=route, status=str(status[0]))

    async def _route(self, scope, receive, send, path: str) -> None:
        if (path.startswith("/v1/") or path in TOKENIZER_ROUTES) and not self._authorized(scope):
            error = APIError(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                             code="invalid_api_key")
            return await error.response()(scope, receive, send)
        if path not in GENERATION_ROUTES or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        metrics, limit = self.state.metrics, self.state.max_queue
        if limit is not None and metrics.in_flight >= limit:
            error = APIError(429, f"the server is at its limit of {limit} requests in flight (--max-queue); "
                             "retry later", type="rate_limit_error", code="queue_full")
            return await error.response()(scope, receive, send)
        metrics.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            metrics.in_flight -= 1

    def _authorized(self, scope) -> bool:
        if self.state.api_key is None:
            return True
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        return hmac.compare_digest(header.encode(), f"Bearer {self.state.api_key}".encode())


def build_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="ingot", version=ingot.__version__, docs_url=None, redoc_url=None)
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)  # logged by Starlette, answered in OpenAI's shape
    _add_openai_routes(app, state)
    _add_tokenizer_routes(app, state)
    _add_service_routes(app, state)
    _mount_planner(app)
    app.add_middleware(Gate, state=state)
    return app


async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return exc.response()


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    return APIError(500, f"internal error: {type(exc).__name__}: {exc}; see the server log",
                    type="server_error").response()


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
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
        return {"object": "list", "data": [state.model_card()]}

    @app.get("/v1/models/{model:path}")
    async def model(model: str) -> dict:
        state.check_model(model)
        return state.model_card()


def _add_tokenizer_routes(app: FastAPI, state: ServerState) -> None:
    from ingot.serve import tokenize

    @app.get("/tokenizer_info")
    async def tokenizer_info() -> dict:
        return tokenize.tokenizer_info(state)

    @app.post("/tokenize")
    async def tokenize_text(request: Request) -> dict:
        return tokenize.tokenize(state, await handlers.parse(tokenize.TokenizeRequest, request))

    @app.post("/detokenize")
    async def detokenize(request: Request) -> dict:
        return tokenize.detokenize(state, await handlers.parse(tokenize.DetokenizeRequest, request))


def _add_service_routes(app: FastAPI, state: ServerState) -> None:
    @app.get("/health")
    async def health() -> Response:
        failure = state.llm.failure()
        if failure is not None:
            return APIError(503, failure, type="server_error").response()
        return JSONResponse({"status": "ok"})

    @app.get("/version")
    async def version() -> dict:
        import torch

        return {"version": ingot.__version__, "torch": torch.__version__,
                "engine_format": state.llm.spec.format_version}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(state.llm.stats()), media_type=CONTENT_TYPE)


def _mount_planner(app: FastAPI) -> None:
    from ingot.plan.web import make_plan_app

    plan = make_plan_app("/plan")

    @app.api_route("/plan", methods=["GET", "HEAD"])
    @app.api_route("/plan/{rest:path}", methods=["GET", "HEAD"])
    async def planner(request: Request) -> Response:
        query = f"?{request.url.query}" if request.url.query else ""
        answer = plan(request.method, request.url.path + query)
        return Response(answer.body, answer.status, headers=dict(answer.headers), media_type=answer.content_type)
