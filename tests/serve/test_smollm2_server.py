"""The real SmolLM2-135M-Instruct behind `ingot serve`, through the official openai client."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]




def test_chat_answers_paris_and_streams_the_same(smol_server):
    client = smol_server.client()
    out = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=48, temperature=0)
    answer = out.choices[0].message.content
    assert "Paris" in answer
    assert out.choices[0].finish_reason == "stop", "the model ends its answer with <|im_end|>"
    assert "<|im_end|>" not in answer
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
        model="smollm2", messages=QUESTION, max_tokens=48, temperature=0, stream=True))
    assert streamed == answer


def test_completion_with_stop_and_logprobs(smol_server):
    client = smol_server.client()
    out = client.completions.create(model="smollm2", prompt="The capital of France is", max_tokens=16,
                                    temperature=0, stop=["."], logprobs=2)
    choice = out.choices[0]
    assert "Paris" in choice.text and "." not in choice.text
    assert choice.finish_reason == "stop"
    assert "".join(choice.logprobs.tokens).startswith(choice.text)
    seeded = dict(model="smollm2", prompt="Once upon a time", max_tokens=24, temperature=0.8, seed=5)
    whole = client.completions.create(**seeded).choices[0].text
    assert "".join(c.choices[0].text for c in client.completions.create(**seeded, stream=True)) == whole


def test_bench_serve_against_smollm2(smol_server, tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "ingot.cli", "bench", "serve", "--url", smol_server.url,
                           "--num-prompts", "8", "--isl", "32", "--osl", "8", "--max-concurrency", "4",
                           "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert (result["completed"], result["model"]) == (8, "smollm2")
    assert 24 <= result["mean_input_tokens"] <= 40, "SmolLM2 reads most synthetic words as one token"
