"""KServe v2 / Triton over HTTP and gRPC, through the official tritonclient, against the session's shared `ingot serve
--grpc-port` subprocess of the tiny engine (and one HTTP check on the real SmolLM2)."""

from __future__ import annotations

import asyncio
import json
import threading

import httpx
import numpy as np
import pytest

tritonclient_http = pytest.importorskip("tritonclient.http")
tritonclient_grpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

MODEL = "tiny"


@pytest.fixture(scope="module")
def v2_server(server):
    """The session's shared server (it listens for gRPC too)."""
    return server


@pytest.fixture(scope="module")
def http_client(v2_server):
    return tritonclient_http.InferenceServerClient(v2_server.url.removeprefix("http://"))


@pytest.fixture(scope="module")
def grpc_client(v2_server):
    return tritonclient_grpc.InferenceServerClient(v2_server.grpc_url)


def _inputs(module, prompt: str, max_tokens: int, stream: bool | None = None, binary: bool = True) -> list:
    text = module.InferInput("text_input", [1, 1], "BYTES")
    limit = module.InferInput("max_tokens", [1, 1], "INT32")
    extra = {} if binary or module is tritonclient_grpc else {"binary_data": False}
    text.set_data_from_numpy(np.array([[prompt.encode()]], dtype=object), **extra)
    limit.set_data_from_numpy(np.array([[max_tokens]], dtype=np.int32), **extra)
    inputs = [text, limit]
    if stream is not None:
        flag = module.InferInput("stream", [1, 1], "BOOL")
        flag.set_data_from_numpy(np.array([[stream]], dtype=bool), **extra)
        inputs.append(flag)
    return inputs


def _text(result) -> str:
    value = result.as_numpy("text_output").reshape(-1)[0]
    return value if isinstance(value, str) else value.decode()  # JSON outputs come back as str


def _openai_greedy(server, prompt: str, max_tokens: int) -> str:
    return server.client().completions.create(model=MODEL, prompt=prompt, max_tokens=max_tokens,
                                              temperature=0).choices[0].text


def test_http_health_and_metadata(v2_server, http_client):
    assert http_client.is_server_live() and http_client.is_server_ready()
    assert http_client.is_model_ready(MODEL) and http_client.is_model_ready(MODEL, "1")
    assert not http_client.is_model_ready("nope")
    assert "generate" in http_client.get_server_metadata()["extensions"]
    meta = http_client.get_model_metadata(MODEL)
    assert meta["versions"] == ["1"] and {"text_input", "max_tokens", "stop_words", "stream"} <= {
        t["name"] for t in meta["inputs"]}
    assert [t["name"] for t in meta["outputs"]] == ["text_output"]
    config = http_client.get_model_config(MODEL)
    assert config["max_batch_size"] == 32 and config["model_transaction_policy"]["decoupled"]


def test_http_infer_binary_and_json_match_openai(v2_server, http_client):
    expected = _openai_greedy(v2_server, "Hello there", 12)
    binary = http_client.infer(MODEL, _inputs(tritonclient_http, "Hello there", 12))
    assert _text(binary) == expected
    as_json = http_client.infer(MODEL, _inputs(tritonclient_http, "Hello there", 12, binary=False),
                                outputs=[tritonclient_http.InferRequestedOutput("text_output", binary_data=False)])
    assert _text(as_json) == expected and as_json.get_response()["model_version"] == "1"
    raw = httpx.post(f"{v2_server.url}/v2/models/{MODEL}/versions/1/infer", json={
        "inputs": [{"name": "text_input", "shape": [2, 1], "datatype": "BYTES", "data": ["Hello there", "Hi"]},
                   {"name": "max_tokens", "shape": [1, 1], "datatype": "INT32", "data": [12]},
                   {"name": "stop_words", "shape": [1, 1], "datatype": "BYTES", "data": [""]}]})
    assert raw.status_code == 200, raw.text
    out = raw.json()["outputs"][0]
    assert out["shape"] == [2, 1] and out["data"] == [expected, _openai_greedy(v2_server, "Hi", 12)]


def test_generate_and_generate_stream(v2_server):
    expected = _openai_greedy(v2_server, "Once upon", 10)
    body = {"text_input": "Once upon", "max_tokens": 10, "bad_words": "", "stop_words": ""}
    answer = httpx.post(f"{v2_server.url}/v2/models/{MODEL}/generate", json=body).json()
    assert answer["text_output"] == expected and answer["model_name"] == MODEL
    with httpx.stream("POST", f"{v2_server.url}/v2/models/{MODEL}/generate_stream",
                      json={**body, "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[len("data: "):]) for line in response.iter_lines() if line.startswith("data: ")]
    assert len(events) > 1 and "".join(e["text_output"] for e in events) == expected


def test_http_errors_follow_the_protocol_and_the_server_stays_up(v2_server, http_client):
    url = f"{v2_server.url}/v2/models"
    for path in ("/nope", "/nope/ready", "/nope/config", f"/{MODEL}/versions/7"):
        response = httpx.get(url + path)
        assert response.status_code == 404 and "error" in response.json(), path
    with pytest.raises(InferenceServerException) as info:
        http_client.infer("nope", _inputs(tritonclient_http, "Hi", 4))
    assert "unknown model" in info.value.message()
    tensor = {"name": "text_input", "shape": [1, 1], "datatype": "BYTES", "data": ["Hi"]}
    limit = {"name": "max_tokens", "shape": [1, 1], "datatype": "INT32", "data": [4]}
    malformed = [
        b"{not json",
        json.dumps({"inputs": [tensor]}),  # max_tokens is required
        json.dumps({"inputs": [tensor, {**limit, "datatype": "FP64"}]}),  # wrong datatype
        json.dumps({"inputs": [tensor, {**limit, "shape": [1, 2]}]}),  # shape and data disagree
        json.dumps({"inputs": [tensor, limit, {"name": "temperature", "shape": [1], "datatype": "FP32",
                                               "data": ["hot"]}]}),
        json.dumps({"inputs": [tensor, limit, {"name": "beam_width", "shape": [1], "datatype": "INT32",
                                               "data": [4]}]}),
        json.dumps({"inputs": [tensor, limit, {"name": "secret", "shape": [1], "datatype": "INT32", "data": [1]}]}),
        json.dumps({"inputs": [tensor, {**limit, "data": [10**6]}]}),  # past the engine's max_seq_len
    ]
    for body in malformed:
        response = httpx.post(f"{url}/{MODEL}/infer", content=body)
        assert response.status_code == 400 and set(response.json()) == {"error"}, (body, response.text)
    header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": 99}, "data": None}, limit]})
    cut = httpx.post(f"{url}/{MODEL}/infer", content=header.encode() + b"\x05\x00\x00\x00Hi",
                     headers={"Inference-Header-Content-Length": str(len(header))})
    assert cut.status_code == 400 and "binary_data_size" in cut.json()["error"]
    bad_stream = httpx.post(f"{url}/{MODEL}/generate_stream", json={"text_input": "Hi", "max_tokens": "four"})
    assert bad_stream.status_code == 400 and "max_tokens" in bad_stream.json()["error"]
    assert _text(http_client.infer(MODEL, _inputs(tritonclient_http, "Still up?", 3)))  # still serving


def test_api_key_guards_v2_models_over_http_and_grpc(guarded_server):
    from tests.serve.conftest import API_KEY

    body = {"text_input": "Hi", "max_tokens": 2}
    url = f"{guarded_server.url}/v2/models/{MODEL}/generate"
    refused = httpx.post(url, json=body)
    assert refused.status_code == 401 and set(refused.json()) == {"error"}
    assert httpx.get(f"{guarded_server.url}/v2/health/ready").status_code == 200
    assert httpx.post(url, json=body, headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
    client = tritonclient_grpc.InferenceServerClient(guarded_server.grpc_url)
    assert client.is_server_live() and client.is_server_ready()
    with pytest.raises(InferenceServerException) as info:
        client.infer(MODEL, _inputs(tritonclient_grpc, "Hi", 2))
    assert info.value.status() == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(InferenceServerException):
        client.get_model_metadata(MODEL, headers={"authorization": "Bearer wrong"})
    answer = client.infer(MODEL, _inputs(tritonclient_grpc, "Hi", 2), headers={"authorization": f"Bearer {API_KEY}"})
    assert answer.as_numpy("text_output").shape == (1, 1)


def test_grpc_health_metadata_infer_and_stream(v2_server, grpc_client):
    assert grpc_client.is_server_live() and grpc_client.is_server_ready() and grpc_client.is_model_ready(MODEL)
    assert not grpc_client.is_model_ready("nope")
    meta = grpc_client.get_model_metadata(MODEL, as_json=True)
    assert meta["name"] == MODEL and "text_input" in {t["name"] for t in meta["inputs"]}
    assert grpc_client.get_model_config(MODEL, as_json=True)["config"]["max_batch_size"] == 32
    expected = _openai_greedy(v2_server, "Stream me", 16)
    assert _text(grpc_client.infer(MODEL, _inputs(tritonclient_grpc, "Stream me", 16))) == expected

    pieces, finals = [], []
    finished = threading.Event()  # the sync client calls back on a thread of its own

    def on_response(result, error):
        assert error is None, error
        pieces.append(_text(result))
        final = result.get_response().parameters["triton_final_response"].bool_param
        finals.append(final)
        if final:
            finished.set()

    grpc_client.start_stream(callback=on_response)
    try:
        grpc_client.async_stream_infer(MODEL, _inputs(tritonclient_grpc, "Stream me", 16, stream=True))
        assert finished.wait(60)
    finally:
        grpc_client.stop_stream()
    assert len(pieces) > 1 and "".join(pieces) == expected
    assert finals[-1] and not any(finals[:-1])


def test_twenty_concurrent_grpc_streams(v2_server):
    from tritonclient.grpc import aio

    prompts = [f"Request number {i}" for i in range(20)]
    expected = {p: _openai_greedy(v2_server, p, 12) for p in prompts[:2]}

    async def one(prompt: str) -> tuple[str, str]:
        client = aio.InferenceServerClient(v2_server.grpc_url)

        async def requests():
            yield {"model_name": MODEL, "inputs": _inputs(tritonclient_grpc, prompt, 12, stream=True)}
        text = []
        try:
            async for result, error in client.stream_infer(requests()):
                assert error is None, error
                text.append(_text(result))
                if result.get_response().parameters["triton_final_response"].bool_param:
                    break
        finally:
            await client.close()
        return prompt, "".join(text)

    async def main():
        return await asyncio.gather(*(one(p) for p in prompts))
    results = dict(asyncio.run(main()))
    assert len(results) == 20 and all(results[p] == expected[p] for p in expected)
    assert all(len(text) > 0 for text in results.values())


def test_grpc_errors_and_the_server_stays_up(v2_server, grpc_client):
    with pytest.raises(InferenceServerException) as info:
        grpc_client.infer("nope", _inputs(tritonclient_grpc, "Hi", 4))
    assert info.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as info:
        grpc_client.get_model_metadata("nope")
    assert info.value.status() == "StatusCode.NOT_FOUND"
    wrong = tritonclient_grpc.InferInput("max_tokens", [1, 1], "FP32")
    wrong.set_data_from_numpy(np.array([[4.0]], dtype=np.float32))
    with pytest.raises(InferenceServerException) as info:
        grpc_client.infer(MODEL, [_inputs(tritonclient_grpc, "Hi", 4)[0], wrong])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT" and "max_tokens" in info.value.message()

    errors, results = [], []
    finished = threading.Event()

    def on_response(result, error):
        (errors if error is not None else results).append(error or result)
        if error is not None or result.get_response().parameters["triton_final_response"].bool_param:
            if len(errors) + len(results) >= 2:
                finished.set()

    grpc_client.start_stream(callback=on_response)
    try:
        grpc_client.async_stream_infer(MODEL, [_inputs(tritonclient_grpc, "Hi", 4)[0], wrong])
        grpc_client.async_stream_infer(MODEL, _inputs(tritonclient_grpc, "Hi", 4))  # the stream goes on
        assert finished.wait(60)
    finally:
        grpc_client.stop_stream()
    assert len(errors) == 1 and "max_tokens" in str(errors[0]) and len(results) == 1
    assert grpc_client.is_server_live() and _text(grpc_client.infer(MODEL, _inputs(tritonclient_grpc, "Up", 3)))


def test_metrics_parse_and_count_v2_requests(v2_server):
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{v2_server.url}/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("ingot_http_requests", "ingot_time_to_first_token_seconds", "ingot_kv_cache_usage_ratio",
                 "nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
                 "nv_inference_request_duration_us", "nv_inference_first_response_histogram_ms"):
        assert name in families, name

    def value(name: str, **labels) -> float:
        return sum(s.value for s in families[name].samples
                   if s.name.removesuffix("_total") == name and labels.items() <= s.labels.items())
    assert value("nv_inference_request_success", model=MODEL, version="1") >= 3
    assert value("nv_inference_count", model=MODEL) >= value("nv_inference_request_success", model=MODEL)
    assert value("nv_inference_request_failure", model=MODEL, reason="REJECTED") >= 1
    assert value("nv_inference_pending_request_count", model=MODEL) == 0
    assert value("ingot_http_requests", route="/v2/models/infer", status="400") >= 1


@pytest.mark.slow
def test_smollm2_generate_matches_openai(smol_server):
    prompt = "The capital of France is"
    expected = smol_server.client().completions.create(model="smollm2", prompt=prompt, max_tokens=12,
                                                       temperature=0, stop=["."]).choices[0].text
    answer = httpx.post(f"{smol_server.url}/v2/models/smollm2/generate",
                        json={"text_input": prompt, "max_tokens": 12, "stop_words": ["."]}, timeout=60).json()
    assert answer["text_output"] == expected and "Paris" in expected
    client = tritonclient_http.InferenceServerClient(smol_server.url.removeprefix("http://"))
    stop = tritonclient_http.InferInput("stop_words", [1, 1], "BYTES")
    stop.set_data_from_numpy(np.array([[b"."]], dtype=object))
    assert _text(client.infer("smollm2", [*_inputs(tritonclient_http, prompt, 12), stop])) == expected
