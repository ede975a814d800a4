"""The OpenAI API, through the official client, against a real `ingot serve` of a tiny random model,
on one rank and split over two tensor-parallel ranks: answers equal the in-process (one-rank)
engine's, streams equal non-streamed answers, usage adds up."""

from __future__ import annotations

import math
import re

import httpx
import pytest

from ingot import SamplingParams

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module", params=["tp1", "tp2"])
def server(request, server, serve_engine_tp2, tmp_path_factory):
    """The server of this module: the session's one-rank server, then the same model over two
    tensor-parallel ranks."""
    import signal

    from tests.serve.conftest import start_server

    if request.param == "tp1":
        yield server
        return
    srv = start_server(serve_engine_tp2, tmp_path_factory.mktemp("logs") / "api-tp2.log")
    yield srv
    assert srv.stop(signal.SIGTERM) == 0, srv.log.read_text()


@pytest.fixture(scope="module")
def client(server):
    return server.client()


def _stream_text(stream) -> tuple[dict[int, str], dict[int, str], object]:
    """Join a stream's deltas per choice: (texts, finish reasons, usage of the last chunk)."""
    texts, reasons, usage = {}, {}, None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            delta = choice.text if hasattr(choice, "text") else (choice.delta.content or "")
            texts[choice.index] = texts.get(choice.index, "") + delta
            if choice.finish_reason:
                reasons[choice.index] = choice.finish_reason
    return texts, reasons, usage


def test_models_health_version(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", httpx.get(f"{server.url}/version").json()["version"])


def test_completion_equals_engine(client, reference):
    out = client.completions.create(model="tiny", prompt="Hello there", max_tokens=10, temperature=0)
    expected = reference.generate(["Hello there"], SamplingParams(max_tokens=10, temperature=0))[0]
    assert out.object == "text_completion" and out.model == "tiny"
    assert out.choices[0].text == expected.text
    assert out.choices[0].finish_reason == expected.finish_reason
    prompt_tokens = len(expected.prompt_token_ids)
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (prompt_tokens, len(expected.token_ids))
    assert out.usage.total_tokens == prompt_tokens + len(expected.token_ids)


def test_chat_equals_engine(client, reference):
    out = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12, temperature=0)
    prompt = reference.tokenizer.encode_chat(MESSAGES)
    expected = reference.generate([prompt], SamplingParams(max_tokens=12, temperature=0))[0]
    assert out.object == "chat.completion"
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == expected.text
    assert out.usage.prompt_tokens == len(prompt)
    assert out.usage.completion_tokens == len(expected.token_ids)


def test_max_completion_tokens_and_token_id_prompt(client, reference):
    chat = client.chat.completions.create(model="tiny", messages=MESSAGES, max_completion_tokens=3, temperature=0)
    assert chat.usage.completion_tokens == 3 and chat.choices[0].finish_reason == "length"
    ids = reference.tokenizer.encode("Hello there")
    by_ids = client.completions.create(model="tiny", prompt=ids, max_tokens=6, temperature=0)
    by_text = client.completions.create(model="tiny", prompt="Hello there", max_tokens=6, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_stream_equals_non_stream_for_the_same_seed(client, endpoint):
    kwargs = dict(model="tiny", max_tokens=20, temperature=1.0, top_p=0.9, seed=1234)
    if endpoint == "completions":
        create, kwargs["prompt"] = client.completions.create, "Once upon a time"
    else:
        create, kwargs["messages"] = client.chat.completions.create, MESSAGES
    whole = create(**kwargs)
    texts, reasons, usage = _stream_text(create(**kwargs, stream=True, stream_options={"include_usage": True}))
    text = whole.choices[0].text if endpoint == "completions" else whole.choices[0].message.content
    assert texts[0] == text
    assert reasons[0] == whole.choices[0].finish_reason
    assert usage.model_dump() == whole.usage.model_dump()


def test_n_samples(client):
    kwargs = dict(model="tiny", prompt="Roses are", max_tokens=8, temperature=1.0, seed=7,
                  extra_body={"ignore_eos": True})
    out = client.completions.create(n=3, **kwargs)
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert len({c.text for c in out.choices}) > 1, "independent samples differ"
    assert out.usage.completion_tokens == 3 * 8
    assert out.choices[0].text == client.completions.create(n=1, **kwargs).choices[0].text, "sample 0 = n=1"
    texts, _, usage = _stream_text(client.completions.create(n=3, stream=True, stream_options={"include_usage": True},
                                                             **kwargs))
    assert texts == {c.index: c.text for c in out.choices}
    assert usage.completion_tokens == 3 * 8


def test_batch_of_prompts(client):
    prompts = ["Roses are", "The sky is"]
    out = client.completions.create(model="tiny", prompt=prompts, n=2, max_tokens=5, temperature=1.0, seed=3)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    for j, prompt in enumerate(prompts):
        alone = client.completions.create(model="tiny", prompt=prompt, n=2, max_tokens=5, temperature=1.0, seed=3)
        assert [c.text for c in out.choices[2 * j: 2 * j + 2]] == [c.text for c in alone.choices]
    texts, _, _ = _stream_text(client.completions.create(model="tiny", prompt=prompts, n=2, max_tokens=5,
                                                         temperature=1.0, seed=3, stream=True))
    assert texts == {c.index: c.text for c in out.choices}


def _stop_candidate(text: str) -> str:
    """A two-character piece of the greedy answer, away from its start, free of U+FFFD."""
    for i in range(3, len(text) - 2):
        piece = text[i:i + 2]
        if "\ufffd" not in piece and piece.strip():
            return piece
    raise AssertionError(f"the tiny model's answer has no usable stop string: {text!r}")


def test_stop_strings(client):
    greedy = client.completions.create(model="tiny", prompt="Count:", max_tokens=30, temperature=0,
                                       extra_body={"ignore_eos": True}).choices[0].text
    stop = _stop_candidate(greedy)
    cut = greedy[:greedy.find(stop)]
    out = client.completions.create(model="tiny", prompt="Count:", max_tokens=30, temperature=0, stop=[stop, "@@@"])
    assert (out.choices[0].text, out.choices[0].finish_reason) == (cut, "stop")
    assert out.choices[0].model_extra["stop_reason"] == stop
    texts, reasons, _ = _stream_text(client.completions.create(model="tiny", prompt="Count:", max_tokens=30,
                                                               temperature=0, stop=stop, stream=True))
    assert (texts[0], reasons[0]) == (cut, "stop")
    kept = client.completions.create(model="tiny", prompt="Count:", max_tokens=30, temperature=0, stop=stop,
                                     extra_body={"include_stop_str_in_output": True})
    assert kept.choices[0].text == cut + stop


def test_completion_logprobs(client):
    out = client.completions.create(model="tiny", prompt="abc", max_tokens=6, temperature=0, logprobs=3)
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == out.usage.completion_tokens == 6
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert chosen <= 0 and len(top) == 3, "partial UTF-8 tokens are written as bytes:, so keys never collide"
        assert math.isclose(chosen, max(top.values()), abs_tol=1e-4), "greedy picks the most likely token"
        assert sum(math.exp(v) for v in top.values()) <= 1 + 1e-4
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    streamed = [c.choices[0].logprobs for c in client.completions.create(
        model="tiny", prompt="abc", max_tokens=6, temperature=0, logprobs=3, stream=True) if c.choices[0].logprobs]
    assert [t for s in streamed for t in s.token_logprobs] == pytest.approx(lp.token_logprobs, abs=1e-5)


def test_chat_logprobs(client):
    out = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=5, temperature=0,
                                         logprobs=True, top_logprobs=2)
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens == 5
    for entry in content:
        assert len(entry.top_logprobs) == 2
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob, abs=1e-4)
        if not entry.token.startswith("bytes:"):  # else: part of a UTF-8 character, written as bytes:\\xNN
            assert entry.bytes == list(entry.token.encode())
    text = b"".join(bytes(entry.bytes) for entry in content).decode("utf-8", errors="replace")
    assert text == out.choices[0].message.content
    plain = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=5, temperature=0)
    assert plain.choices[0].logprobs is None


def test_echo(client):
    out = client.completions.create(model="tiny", prompt="Echo me", max_tokens=4, temperature=0, echo=True)
    plain = client.completions.create(model="tiny", prompt="Echo me", max_tokens=4, temperature=0)
    assert out.choices[0].text == "Echo me" + plain.choices[0].text
    texts, _, _ = _stream_text(client.completions.create(model="tiny", prompt="Echo me", max_tokens=4,
                                                         temperature=0, echo=True, stream=True))
    assert texts[0] == out.choices[0].text


def test_usage_only_in_last_chunk_when_asked(client):
    # ignore_eos: a sampled EOS would end the answer before 4 tokens (the usage would rightly say 3)
    chunks = list(client.completions.create(model="tiny", prompt="Hi", max_tokens=4, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4
    assert all(c.usage is None for c in chunks[:-1])
    plain = list(client.completions.create(model="tiny", prompt="Hi", max_tokens=4, stream=True))
    assert all(c.usage is None and c.choices for c in plain)


def test_metrics_exposition(server, client):
    client.completions.create(model="tiny", prompt="metrics", max_tokens=3)
    text = httpx.get(f"{server.url}/metrics").text
    sample = re.compile(r'^[a-z_:][a-z0-9_:]*(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? [-+0-9.eInf]+$')
    for line in text.splitlines():
        assert line.startswith(("# HELP ingot_", "# TYPE ingot_", "# HELP nv_", "# TYPE nv_")) or sample.match(line), \
            line
    m = server.metrics()
    for name in ("ingot_num_requests_running", "ingot_num_requests_waiting", "ingot_kv_cache_usage_ratio",
                 "ingot_prefix_cache_hit_rate", "ingot_prompt_tokens_total", "ingot_generation_tokens_total",
                 "ingot_computed_tokens_total", "ingot_recomputed_tokens_total",
                 "ingot_time_to_first_token_seconds_count", "ingot_time_per_output_token_seconds_count",
                 "ingot_e2e_request_latency_seconds_count"):
        assert name in m, name
    assert m["ingot_e2e_request_latency_seconds_count"] >= 1
    assert m["ingot_computed_tokens_total"] >= m["ingot_generation_tokens_total"] > 0
    assert m['ingot_http_requests_total{route="/v1/completions",status="200"}'] >= 1
    assert m['ingot_time_to_first_token_seconds_bucket{le="+Inf"}'] == m["ingot_time_to_first_token_seconds_count"]


def test_planner_is_mounted(server):
    page = httpx.get(f"{server.url}/plan/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "gpus" in httpx.get(f"{server.url}/plan/api/options").json()


def test_echo_with_logprobs_scores_the_prompt(server, client, reference):
    """The legacy completions API's prompt scoring (what evaluation harnesses use): with echo and
    logprobs, the prompt's tokens come first, the first with a null logprob."""
    prompt_ids = httpx.post(f"{server.url}/tokenize", json={"prompt": "Score this text"}).json()["tokens"]
    out = client.completions.create(model="tiny", prompt=prompt_ids, max_tokens=3, temperature=0, echo=True,
                                    logprobs=2)
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(prompt_ids) + 3 == len(lp.token_logprobs) == len(lp.text_offset)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    (want,) = reference.generate([prompt_ids], SamplingParams(max_tokens=3, temperature=0.0, prompt_logprobs=2,
                                                              logprobs=2))
    expected = [want.prompt_logprobs[i][t] for i, t in enumerate(prompt_ids) if i] + \
        [e[t] for e, t in zip(want.outputs[0].logprobs, want.outputs[0].token_ids)]
    assert lp.token_logprobs[1:] == pytest.approx(expected, abs=1e-5)
    assert all(len(top) == 2 for top in lp.top_logprobs[1:])
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    assert out.choices[0].text.startswith("".join(lp.tokens[: len(prompt_ids)]))
    chunks = [c.choices[0] for c in client.completions.create(model="tiny", prompt=prompt_ids, max_tokens=3,
                                                              temperature=0, echo=True, logprobs=2, stream=True)]
    streamed = [v for c in chunks if c.logprobs for v in c.logprobs.token_logprobs]
    assert streamed[0] is None and streamed[1:] == pytest.approx(lp.token_logprobs[1:], abs=1e-5)
    assert "".join(c.text for c in chunks) == out.choices[0].text


def test_max_tokens_0_with_echo_only_scores_the_prompt(client):
    out = client.completions.create(model="tiny", prompt="Only the prompt", max_tokens=0, echo=True, logprobs=0)
    choice = out.choices[0]
    assert choice.text == "Only the prompt" and choice.finish_reason == "length"
    assert out.usage.completion_tokens == 0 and len(choice.logprobs.tokens) == out.usage.prompt_tokens
    assert choice.logprobs.token_logprobs[0] is None and all(v <= 0 for v in choice.logprobs.token_logprobs[1:])
    batch = client.completions.create(model="tiny", prompt=["one", "two words"], max_tokens=0, echo=True, logprobs=1,
                                      n=2)
    assert [c.text for c in batch.choices] == ["one", "one", "two words", "two words"]
    assert batch.choices[0].logprobs.token_logprobs == batch.choices[1].logprobs.token_logprobs


def test_tokenizer_endpoints(server, reference):
    info = httpx.get(f"{server.url}/tokenizer_info").json()
    assert info["eos_token"] == "</s>" and info["model_max_length"] == reference.engine.spec.build.max_seq_len
    ids = httpx.post(f"{server.url}/tokenize", json={"prompt": "héllo wörld", "add_special_tokens": False}).json()
    assert ids["tokens"] == reference.tokenizer.encode("héllo wörld", add_special_tokens=False)
    assert ids["count"] == len(ids["tokens"])
    chat = httpx.post(f"{server.url}/tokenize", json={"messages": MESSAGES}).json()
    assert chat["tokens"] == reference.tokenizer.encode_chat(MESSAGES)
    back = httpx.post(f"{server.url}/detokenize", json={"tokens": ids["tokens"]}).json()
    assert back == {"prompt": "héllo wörld"}
    for route, body, param in (("tokenize", {}, None), ("tokenize", {"prompt": "a", "messages": MESSAGES}, None),
                               ("detokenize", {"tokens": [10**6]}, "tokens"), ("tokenize", {"prompt": 5}, "prompt")):
        answer = httpx.post(f"{server.url}/{route}", json=body)
        assert answer.status_code == 400, (route, body, answer.text)
        assert param is None or answer.json()["error"]["param"] == param
