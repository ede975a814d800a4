"""The web app over real HTTP (stdlib server on loopback), mounted at / and under a prefix."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from wsgiref.util import setup_testing_defaults

from ingot.plan.planner import make_plan
from ingot.plan.web import make_plan_app


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers.get("Content-Type"), response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type"), err.read()


def test_page_and_options(plan_server):
    status, ctype, body = _get(plan_server + "/")
    assert status == 200 and ctype.startswith("text/html") and b"api/plan" in body
    status, _, body = _get(plan_server + "/api/options")
    options = json.loads(body)
    assert {m["key"] for m in options["models"]} >= {"llama-3.1-8b", "deepseek-v3", "qwen3-30b-a3b"}
    assert {g["key"] for g in options["gpus"]} >= {"a100-40gb", "h100-pcie", "gb200"}
    assert [p["key"] for p in options["precisions"]][:3] == ["bf16", "fp16", "fp8"]


def test_plan_endpoint_is_the_python_plan(plan_server):
    query = ("model=llama-3.1-70b&gpu=h100-sxm&precision=fp8&kv_cache_dtype=auto"
             "&isl=8192&osl=2048&concurrency=64&num_gpus=")
    status, ctype, body = _get(f"{plan_server}/api/plan?{query}")
    assert status == 200 and ctype == "application/json"
    assert json.loads(body) == json.loads(json.dumps(
        make_plan("llama-3.1-70b", "h100-sxm", "fp8", "auto", isl=8192, osl=2048, concurrency=64)))


def test_plan_endpoint_errors_are_400_json(plan_server):
    status, _, body = _get(f"{plan_server}/api/plan?model=llama-3.1-8b&gpu=v100")
    error = json.loads(body)["error"]
    assert status == 400 and "unknown GPU 'v100'" in error["message"] and "h100-sxm" in error["message"]
    status, _, body = _get(f"{plan_server}/api/plan?model=llama-3.1-8b&gpu=h100&isl=abc")
    assert status == 400 and "isl must be an integer" in json.loads(body)["error"]["message"]
    status, _, body = _get(f"{plan_server}/api/plan?model=/etc/passwd&gpu=h100")
    assert status == 400 and "presets" in json.loads(body)["error"]["message"]
    assert _get(f"{plan_server}/nope")[0] == 404


def test_mounted_under_prefix():
    app = make_plan_app("/plan")
    assert app.handles("/plan/api/options") and not app.handles("/v1/completions")
    redirect = app("GET", "/plan")
    assert redirect.status == 301 and ("Location", "/plan/") in redirect.headers
    assert app("GET", "/plan/").content_type.startswith("text/html")
    plan = json.loads(app("GET", "/plan/api/plan?model=8b&gpu=h100").body)
    assert plan["fits"]
    assert app("POST", "/plan/api/plan").status == 405


def test_wsgi_face():
    environ = {"PATH_INFO": "/api/plan", "QUERY_STRING": "model=mixtral-8x7b&gpu=l40s&num_gpus=2"}
    setup_testing_defaults(environ)
    seen = {}
    body = b"".join(make_plan_app().wsgi(environ, lambda status, headers: seen.update(status=status)))
    assert seen["status"] == "200 OK" and json.loads(body)["model"]["moe"]


def test_mounted_in_another_stdlib_server():
    """How `ingot serve` can mount the page: its handler hands /plan/... to the app."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from ingot.plan.web import send

    plan_app = make_plan_app("/plan")

    class ServeHandler(BaseHTTPRequestHandler):
        def do_GET(self):
            if plan_app.handles(self.path):
                return send(self, plan_app("GET", self.path))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"other route")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), ServeHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        status, ctype, _ = _get(base + "/plan")  # redirected to /plan/
        assert status == 200 and ctype.startswith("text/html")
        assert json.loads(_get(base + "/plan/api/plan?model=8b&gpu=h100")[2])["fits"]
        assert _get(base + "/v1/models")[2] == b"other route"
    finally:
        server.shutdown()
        server.server_close()
