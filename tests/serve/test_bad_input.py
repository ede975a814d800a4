"""Bad input gets the right 4xx and an OpenAI-shaped body naming the field; the server keeps serving."""

from __future__ import annotations

import httpx
import openai
import pytest

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
COMPLETION = {"model": "tiny", "prompt": "hi", "max_tokens": 4}
LONG_PROMPT = "x" * 100  # 100 tokens with the byte-level tokenizer; the engine takes 64


def post(server, route: str, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/{route}", timeout=30, **kwargs)


def assert_error(response: httpx.Response, status: int, param: str | None, *words: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param, error
    for word in words:
        assert word in error["message"], error
    return error


def test_malformed_json(server):
    error = assert_error(post(server, "completions", content=b'{"prompt": "hi",'), 400, None, "JSON")
    assert error["type"] == "invalid_request_error"
    assert_error(post(server, "chat/completions", content=b"[1, 2]"), 400, None, "JSON object")
    assert_error(post(server, "completions", content=b""), 400, None)


def test_unknown_model(server):
    error = assert_error(post(server, "completions", json={**COMPLETION, "model": "gpt-9"}), 404, "model", "gpt-9")
    assert error["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError) as info:
        server.client().chat.completions.create(model="gpt-9", messages=CHAT["messages"])
    assert info.value.code == "model_not_found"


@pytest.mark.parametrize(("route", "body", "param"), [
    ("completions", {**COMPLETION, "temperature": "hot"}, "temperature"),
    ("completions", {**COMPLETION, "max_tokens": "10"}, "max_tokens"),
    ("completions", {**COMPLETION, "max_tokens": -1}, "max_tokens"),
    ("completions", {**COMPLETION, "n": 0}, "n"),
    ("completions", {**COMPLETION, "top_p": 1.5}, "top_p"),
    ("completions", {**COMPLETION, "top_p": 0}, "top_p"),
    ("completions", {**COMPLETION, "temperature": -1}, "temperature"),
    ("completions", {**COMPLETION, "presence_penalty": 3}, "presence_penalty"),
    ("completions", {**COMPLETION, "frequency_penalty": -2.5}, "frequency_penalty"),
    ("completions", {**COMPLETION, "top_k": -2}, "top_k"),
    ("completions", {**COMPLETION, "min_p": 2}, "min_p"),
    ("completions", {**COMPLETION, "seed": "x"}, "seed"),
    ("completions", {**COMPLETION, "seed": 2**70}, "seed"),
    ("completions", {**COMPLETION, "logprobs": 50}, "logprobs"),
    ("completions", {**COMPLETION, "stop": [""]}, "stop"),
    ("completions", {**COMPLETION, "stop": 5}, "stop"),
    ("completions", {**COMPLETION, "stream": "yes"}, "stream"),
    ("completions", {**COMPLETION, "prompt": [1, "a"]}, "prompt"),
    ("completions", {**COMPLETION, "prompt": []}, "prompt"),
    ("completions", {**COMPLETION, "prompt": [[]]}, "prompt"),
    ("completions", {"model": "tiny"}, "prompt"),
    ("completions", {**COMPLETION, "logit_bias": {"5": 10}}, "logit_bias"),
    ("completions", {**COMPLETION, "suffix": "end"}, "suffix"),
    ("completions", {**COMPLETION, "stream_options": {"include_usage": True}}, "stream_options"),
    ("chat/completions", {"model": "tiny"}, "messages"),
    ("chat/completions", {**CHAT, "messages": []}, "messages"),
    ("chat/completions", {**CHAT, "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ("chat/completions", {**CHAT, "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ("chat/completions", {**CHAT, "max_completion_tokens": -1}, "max_completion_tokens"),
    ("chat/completions", {**CHAT, "top_logprobs": 3}, "top_logprobs"),
    ("chat/completions", {**CHAT, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    # issue 20: constraints and tools that cannot be enforced
    ("chat/completions", {**CHAT, "tools": [{"type": "function", "function": {}}]}, "tools[0]"),
    ("chat/completions", {**CHAT, "tools": [{"type": "function", "function": {"name": "f"}}],
                          "tool_choice": {"type": "function", "function": {"name": "g"}}}, "tool_choice"),
    ("chat/completions", {**CHAT, "tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "objec"}}}], "tool_choice": "required"}, "tools"),
    ("chat/completions", {**CHAT, "response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "properties": {"a": {"type": "string", "pattern": "(("}}}}}},
     "response_format.json_schema.schema"),
    ("chat/completions", {**CHAT, "response_format": {"type": "xml"}}, "response_format.type"),
    ("completions", {**COMPLETION, "guided_regex": "a(b"}, "guided_regex"),
    ("completions", {**COMPLETION, "guided_grammar": "root ::= undefined_rule"}, "guided_grammar"),
    ("completions", {**COMPLETION, "guided_choice": []}, "guided_choice"),
    ("completions", {**COMPLETION, "guided_json": {"type": "objec"}}, "guided_json"),
    ("completions", {**COMPLETION, "guided_regex": "a", "guided_choice": ["a"]}, "guided_choice"),
    ("completions", {**COMPLETION, "structured_outputs": {"regex": "(("}}, "structured_outputs.regex"),
    ("chat/completions", {**CHAT, "n": "2"}, "n"),
    # issue 21: values that broke the sampler or let one request hold up the others
    ("completions", {**COMPLETION, "repetition_penalty": 1e-300}, "repetition_penalty"),
    ("completions", {**COMPLETION, "stop": ["s"] * 17}, "stop"),
    ("completions", {**COMPLETION, "stop": "s" * 1025}, "stop"),
    ("completions", {**COMPLETION, "stop_token_ids": [1] * 257}, "stop_token_ids"),
    ("completions", {**COMPLETION, "prompt": ["a"] * 65}, "prompt"),
    ("completions", {**COMPLETION, "prompt": ["a"] * 8, "n": 33}, "n"),
])
def test_bad_parameter_names_the_field(server, route, body, param):
    error = assert_error(post(server, route, json=body), 400, param)
    assert error["message"]


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_standard_json_numbers_are_refused(server, literal):
    body = b'{"model": "tiny", "prompt": "hi", "max_tokens": 2, "temperature": ' + literal + b"}"
    headers = {"content-type": "application/json"}
    assert_error(post(server, "completions", content=body, headers=headers), 400, "temperature")
    # anywhere: in a free-form object no numeric check looks into, and on the KServe routes
    nested = b'{"model": "tiny", "prompt": "hi", "max_tokens": 2, "user_data": {"x": [' + literal + b"]}}"
    assert_error(post(server, "completions", content=nested, headers=headers), 400, None,
                 f"{literal.decode()} is not a JSON number")
    kserve = httpx.post(f"{server.url}/v2/models/tiny/generate", timeout=30, headers=headers,
                        content=b'{"text_input": "hi", "max_tokens": 2, "temperature": ' + literal + b"}")
    assert kserve.status_code == 400 and "is not a JSON number" in kserve.json()["error"]


def test_stop_token_ids_outside_the_vocabulary(server):
    assert_error(post(server, "completions", json={**COMPLETION, "stop_token_ids": [10**6]}), 400, "stop_token_ids",
                 "vocabulary [0, 311)")


def test_official_client_raises_bad_request(server):
    with pytest.raises(openai.BadRequestError) as info:
        server.client().completions.create(model="tiny", prompt="hi", temperature=5.0)
    assert info.value.param == "temperature" and info.value.type == "invalid_request_error"


def test_prompt_over_the_engines_limits(server):
    assert_error(post(server, "completions", json={**COMPLETION, "prompt": LONG_PROMPT}), 400, "prompt",
                 "max_input_len=64")
    assert_error(post(server, "completions", json={**COMPLETION, "max_tokens": 4095}), 400, "max_tokens",
                 "max_seq_len=4096")
    chat_long = {**CHAT, "messages": [{"role": "user", "content": LONG_PROMPT}]}
    assert_error(post(server, "chat/completions", json=chat_long), 400, "messages", "max_input_len=64")
    assert_error(post(server, "chat/completions", json={**CHAT, "max_completion_tokens": 4095}), 400,
                 "max_completion_tokens", "max_seq_len=4096")
    assert_error(post(server, "completions", json={**COMPLETION, "prompt": [1, 2, 99999]}), 400, "prompt",
                 "vocabulary")
    streamed = post(server, "completions", json={**COMPLETION, "prompt": LONG_PROMPT, "stream": True})
    assert_error(streamed, 400, "prompt", "max_input_len")


def test_routes_and_methods(server):
    error = assert_error(httpx.get(f"{server.url}/v1/nothing"), 404, None)
    assert error["type"] == "not_found_error"
    assert_error(httpx.get(f"{server.url}/v1/completions"), 405, None)


def test_server_keeps_serving_after_bad_input(server):
    for body in (b"{", b'{"prompt": 1}', b'{"model": "nope", "prompt": "x"}'):
        assert post(server, "completions", content=body).status_code in (400, 404)
    out = server.client().completions.create(model="tiny", prompt="still here", max_tokens=3)
    assert out.usage.completion_tokens == 3
    assert httpx.get(f"{server.url}/health").status_code == 200
    metrics = server.metrics()
    assert metrics['ingot_http_requests_total{route="/v1/completions",status="400"}'] >= 2


def test_null_means_the_default(server):
    body = {**COMPLETION, "max_tokens": None, "n": None, "temperature": None, "stop": None, "echo": None}
    response = post(server, "completions", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] <= 16
    assert_error(post(server, "completions", json={**COMPLETION, "prompt": None}), 400, "prompt")
