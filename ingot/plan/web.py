"""The planner as a small web app: one static page plus a JSON API over the same calculator.

    GET {prefix}/                 the page (ingot/plan/web/index.html)
    GET {prefix}/api/options      presets, GPUs, precisions, KV dtypes, defaults
    GET {prefix}/api/plan?model=70b&gpu=h100&precision=fp8&isl=8192&osl=2048&concurrency=64[&num_gpus=8]
                                  the plan, exactly what `ingot plan --json` prints; 400 + error JSON

The page computes nothing itself: every input change asks /api/plan, so the CLI, the JSON
and the page cannot disagree. PlanApp is framework-free (method, path) -> response, with a
WSGI face, so `ingot serve` can mount it under a prefix in whatever server it uses;
`ingot plan --web` runs it alone on the standard library's http.server.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs, urlsplit

from ingot.errors import ConfigError
from ingot.plan import planner
from ingot.plan.gpus import GPUS
from ingot.plan.precisions import KV_DTYPES, PRECISIONS
from ingot.plan.presets import ALIASES, PRESETS

PAGE = Path(__file__).parent / "web" / "index.html"
_INT_PARAMS = ("isl", "osl", "concurrency", "num_gpus")


@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


def _json(status: int, data: Any) -> Response:
    return Response(status, "application/json", json.dumps(data).encode())


def options() -> dict[str, Any]:
    return {
        "models": [{"key": k, "hf_id": s.hf_id, "params_b": round(s.num_params / 1e9, 1), "moe": s.is_moe}
                   for k, s in PRESETS.items()],
        "gpus": [g.to_dict() for g in GPUS.values()],
        "precisions": [{"key": p.name, "about": p.about} for p in PRECISIONS.values()],
        "kv_cache_dtypes": list(KV_DTYPES),
        "defaults": {"model": "llama-3.1-8b", "gpu": "h100-sxm", "precision": "bf16", "kv_cache_dtype": "auto",
                     "isl": planner.DEFAULT_ISL, "osl": planner.DEFAULT_OSL,
                     "concurrency": planner.DEFAULT_CONCURRENCY, "num_gpus": None},
    }


def plan_from_query(query: str) -> dict[str, Any]:
    """Query string -> make_plan. Only presets: a server does not read files a request names."""
    params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    model = params.get("model", "")
    if model.lower() not in PRESETS and model.lower() not in ALIASES:
        raise ConfigError(f"unknown model {model!r}: the page offers the presets {', '.join(PRESETS)} "
                          "(config.json and engine paths work with `ingot plan --model PATH`)")
    kwargs: dict[str, Any] = {"model": model, "gpu": params.get("gpu", ""),
                              "precision": params.get("precision") or None,
                              "kv_cache_dtype": params.get("kv_cache_dtype") or None}
    for name in _INT_PARAMS:
        raw = params.get(name, "").strip()
        if raw in ("", "auto"):
            continue
        try:
            kwargs[name] = int(raw)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    return planner.make_plan(**kwargs)


class PlanApp:
    """(method, path-with-query) -> Response; mount under `prefix` (e.g. "/plan")."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix.rstrip("/")

    def handles(self, path: str) -> bool:
        route = urlsplit(path).path
        return not self.prefix or route == self.prefix or route.startswith(self.prefix + "/")

    def __call__(self, method: str, path: str) -> Response:
        parts = urlsplit(path)
        route = parts.path[len(self.prefix):] if parts.path.startswith(self.prefix) else None
        if method not in ("GET", "HEAD"):
            return _json(405, {"error": {"message": f"{method} not allowed; use GET", "type": "invalid_request_error"}})
        if route == "":  # the page's relative API links need the trailing slash
            return Response(301, "text/plain", b"", (("Location", self.prefix + "/"),))
        if route in ("/", "/index.html"):
            return Response(200, "text/html; charset=utf-8", PAGE.read_bytes())
        if route == "/api/options":
            return _json(200, options())
        if route == "/api/plan":
            try:
                return _json(200, plan_from_query(parts.query))
            except ConfigError as exc:
                return _json(400, {"error": {"message": str(exc), "type": "invalid_request_error"}})
        return _json(404, {"error": {"message": f"no route {parts.path}", "type": "not_found"}})

    def wsgi(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        """The same app for any WSGI server (and ASGI ones through a WSGI adapter)."""
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        query = environ.get("QUERY_STRING", "")
        response = self(environ.get("REQUEST_METHOD", "GET"), path + (f"?{query}" if query else ""))
        start_response(f"{response.status} {HTTPStatus(response.status).phrase}",
                       [("Content-Type", response.content_type), *response.headers])
        return [response.body]


def make_plan_app(prefix: str = "") -> PlanApp:
    return PlanApp(prefix)


def send(handler: BaseHTTPRequestHandler, response: Response, body: bool = True) -> None:
    """Write `response` through any stdlib handler; how another server's handler mounts the app:
        if plan_app.handles(self.path): return send(self, plan_app("GET", self.path))"""
    handler.send_response(response.status)
    handler.send_header("Content-Type", response.content_type)
    handler.send_header("Content-Length", str(len(response.body)))
    handler.send_header("Cache-Control", "no-store")
    for name, value in response.headers:
        handler.send_header(name, value)
    handler.end_headers()
    if body:
        handler.wfile.write(response.body)


def make_handler(app: PlanApp) -> type[BaseHTTPRequestHandler]:
    """A stdlib request handler class serving `app` alone."""

    class PlanRequestHandler(BaseHTTPRequestHandler):
        server_version = "ingot-plan"

        def do_GET(self) -> None:
            send(self, app("GET", self.path))

        def do_HEAD(self) -> None:
            send(self, app("HEAD", self.path), body=False)

        def log_message(self, format: str, *args: Any) -> None:  # quiet: one line per request is noise here
            pass

    return PlanRequestHandler


PlanRequestHandler = make_handler(make_plan_app())


def make_server(host: str = "127.0.0.1", port: int = 0, prefix: str = "") -> ThreadingHTTPServer:
    return ThreadingHTTPServer((host, port), make_handler(make_plan_app(prefix)))


def serve_forever(host: str, port: int) -> int:
    server = make_server(host, port)
    print(f"ingot plan: serving http://{host}:{server.server_address[1]}/  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
