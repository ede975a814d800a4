"""Faults inside the server, in process (no engine): an engine that fails still gets OpenAI-shaped
answers, before and after a stream has started; and the metrics text on known observations."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import httpx
import pytest

from ingot.errors import EngineError
from ingot.runtime.stats import EngineStats
from ingot.serve.app import ServerState, build_app
from ingot.serve.metrics import EngineSample, ServerMetrics
from ingot.serve.models import ModelRegistry


class FailingLLM:
    """Enough of AsyncLLM for the handlers: a byte tokenizer and an engine that raises."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc
        self.tokenizer = SimpleNamespace(
            encode=lambda text, add_special_tokens=True: list(text.encode()), max_token_chars=1,
            decode=lambda ids, skip_special_tokens=True: bytes(ids).decode(errors="replace"))
        self.spec = SimpleNamespace(build=SimpleNamespace(max_input_len=64, max_seq_len=128),
                                    model=SimpleNamespace(vocab_size=256), format_version=1)

    async def generate(self, prompt, params, request_id=None):
        raise self.exc
        yield  # an async generator, like AsyncLLM.generate

    def stats(self) -> EngineStats:
        return EngineStats()


def call(exc: Exception, body: dict) -> httpx.Response:
    async def go():
        app = build_app(ServerState(ModelRegistry.holding(FailingLLM(exc), "fake")))
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post("/v1/completions", json=body)

    return asyncio.run(go())


@pytest.mark.parametrize(("exc", "status", "code"), [(RuntimeError("boom"), 500, None),
                                                      (EngineError("loop died"), 503, "engine_stopped")])
def test_engine_failure_is_an_openai_error(exc, status, code):
    response = call(exc, {"prompt": "hi", "max_tokens": 2})
    assert response.status_code == status
    error = response.json()["error"]
    assert error["type"] == "server_error" and error["code"] == code


def test_engine_failure_mid_stream_is_an_error_event_then_done():
    response = call(EngineError("loop died"), {"prompt": "hi", "max_tokens": 2, "stream": True})
    assert response.status_code == 200
    events = [line[len("data: "):] for line in response.text.splitlines() if line.startswith("data: ")]
    assert json.loads(events[0])["error"]["code"] == "engine_stopped"
    assert events[-1] == "[DONE]"


@pytest.mark.parametrize("template", ["{{ 1 / 0 }}", "{% for m in messages %}", "{{ raise_exception('no') }}",
                                      {"default": 5}])
def test_a_chat_template_that_fails_is_a_400_naming_it(template):
    """Issue 21: a template that raised anything but TemplateError would 500 every chat request."""
    from tokenizers import Tokenizer as Backend
    from tokenizers.models import WordLevel

    from ingot.tokenizer import Tokenizer

    llm = FailingLLM(RuntimeError("not reached"))
    llm.tokenizer = Tokenizer(Backend(WordLevel({"hi": 0, "<unk>": 1}, unk_token="<unk>")), {},
                              chat_template=template, chat_template_file="engines/x/tokenizer_config.json")

    async def go():
        app = build_app(ServerState(ModelRegistry.holding(llm, "fake")))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})

    response = asyncio.run(go())
    error = response.json()["error"]
    assert response.status_code == 400 and error["param"] == "messages", error
    assert "the chat template of engines/x/tokenizer_config.json" in error["message"]


def test_histogram_is_cumulative():
    from prometheus_client.parser import text_string_to_metric_families

    m = ServerMetrics()
    for value in (0.05, 0.1, 0.5, 3.0):
        m.e2e.observe(value)
    families = {f.name: f for f in text_string_to_metric_families(m.render([]))}
    samples = {(s.name, s.labels.get("le")): s.value for s in families["ingot_e2e_request_latency_seconds"].samples}
    assert samples[("ingot_e2e_request_latency_seconds_bucket", "0.1")] == 2  # le is inclusive
    assert samples[("ingot_e2e_request_latency_seconds_bucket", "1.0")] == 3
    assert samples[("ingot_e2e_request_latency_seconds_bucket", "+Inf")] == 4
    assert samples[("ingot_e2e_request_latency_seconds_count", None)] == 4
    assert samples[("ingot_e2e_request_latency_seconds_sum", None)] == pytest.approx(3.65)


def test_sequence_metrics():
    m = ServerMetrics()
    m.observe_sequence(ttft=0.2, e2e=1.2, num_tokens=11, finish_reason="length")
    m.observe_sequence(ttft=None, e2e=0.0, num_tokens=0, finish_reason="abort")
    text = m.render([EngineSample("m", "1", EngineStats(running=2, kv_blocks_total=10, kv_blocks_used=5)),
                     EngineSample("m", "2", EngineStats(), {"ingot_model_resident_bytes": 1024})])
    assert "ingot_time_per_output_token_seconds_sum 0.1" in text
    assert 'ingot_request_finished_total{reason="abort"} 1.0' in text
    assert 'ingot_kv_cache_usage_ratio{model="m",version="1"} 0.5' in text
    assert 'ingot_num_requests_running{model="m",version="1"} 2.0' in text
    assert 'ingot_model_resident_bytes{model="m",version="2"} 1024.0' in text
    assert 'ingot_model_resident_bytes{model="m",version="1"}' not in text


def test_triton_metrics_keep_tritons_names():
    """Triton's counters are exposed without prometheus_client's `_total`, as Triton names them."""
    from prometheus_client.parser import text_string_to_metric_families

    m = ServerMetrics()
    for model in ("a", "b"):
        m.inference_started(model, "1")
    m.observe_inference("a", "1", batch=2, duration_s=0.5, first_response_s=0.1, failure_reason=None)
    m.observe_inference("b", "1", batch=1, duration_s=0.25, first_response_s=None, failure_reason="REJECTED")
    families = {f.name: f for f in text_string_to_metric_families(m.render([]))}
    assert families["nv_inference_request_success"].type == "counter"
    # the parser files counter samples under name_total; the text itself has Triton's names
    value = {(s.name.removesuffix("_total"), tuple(sorted(s.labels.items()))): s.value
             for f in families.values() for s in f.samples}
    a, b = (("model", "a"), ("version", "1")), (("model", "b"), ("version", "1"))
    assert value[("nv_inference_request_success", a)] == 1 and value[("nv_inference_count", a)] == 2
    assert value[("nv_inference_request_failure", (("model", "b"), ("reason", "REJECTED"), ("version", "1")))] == 1
    assert ("nv_inference_request_success", b) not in value
    assert value[("nv_inference_request_duration_us", a)] == pytest.approx(5e5)
    assert value[("nv_inference_pending_request_count", a)] == 0
    assert value[("nv_inference_first_response_histogram_ms_sum", a)] == pytest.approx(100)
