"""`ingot bench serve` against a real server, and its statistics on known numbers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ingot.bench.serve import RequestResult, percentile, summarize


def bench(server, tmp_path, *args: str) -> dict:
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "ingot.cli", "bench", "serve", "--url", f"{server.url}/v1",
                           "--model", "tiny", "--json", str(out), *args],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Mean TTFT (ms):" in done.stdout and "Output token throughput (tok/s):" in done.stdout
    return json.loads(out.read_text())


def test_synthetic_closed_loop(server, tmp_path):
    result = bench(server, tmp_path, "--num-prompts", "12", "--isl", "24", "--osl", "6", "--max-concurrency", "4")
    assert (result["completed"], result["failed"]) == (12, 0)
    assert result["total_output_tokens"] == 12 * 6, "ignore_eos makes every output exactly --osl long"
    assert 12 <= result["mean_input_tokens"] <= 48, "the probe scales words to about --isl tokens"
    for name in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        stats = result[name]
        assert 0 < stats["mean"] and stats["p50"] <= stats["p90"] <= stats["p99"], name
    assert result["e2e_ms"]["mean"] >= result["ttft_ms"]["mean"]
    assert result["request_throughput"] > 0 and result["output_tok_s"] > 0
    assert result["config"]["max_concurrency"] == 4
    assert result["benchmark"] == "serve" and result["command"].startswith("ingot bench serve ")


def test_record_with_the_engine_has_its_ceiling_ratio(server, tmp_path):
    result = bench(server, tmp_path, "--num-prompts", "4", "--isl", "12", "--osl", "4", "--engine",
                   str(server.engine_dir))
    assert result["device"].startswith("cpu") and result["engine"]["architecture"] and result["copy_tbps"] > 0
    ceiling = result["matmul_tflops"] * 1e12 / result["flops_per_output_token"]
    assert result["compute_ceiling_tok_s"] == pytest.approx(ceiling, rel=1e-6)
    assert result["compute_ceiling_ratio"] == pytest.approx(result["output_tok_s"] / result["compute_ceiling_tok_s"],
                                                            abs=1e-4)


def test_jsonl_dataset_with_poisson_arrivals(server, tmp_path):
    lines = [{"prompt": f"question {i}?", "max_tokens": 3 + i} for i in range(6)]
    dataset = tmp_path / "prompts.jsonl"
    dataset.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    result = bench(server, tmp_path, "--dataset", str(dataset), "--request-rate", "50", "--seed", "3")
    assert (result["completed"], result["failed"]) == (6, 0)
    assert result["total_output_tokens"] == sum(line["max_tokens"] for line in lines)


def test_failures_are_counted_not_fatal(server, tmp_path):
    dataset = tmp_path / "prompts.jsonl"
    dataset.write_text(json.dumps({"prompt": "x" * 100, "max_tokens": 2}) + "\n"  # over max_input_len
                       + json.dumps({"prompt": "fine", "max_tokens": 2}) + "\n")
    result = bench(server, tmp_path, "--dataset", str(dataset))
    assert (result["completed"], result["failed"]) == (1, 1)
    assert "max_input_len" in result["errors"][0]


def test_percentile_matches_numpy_linear():
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert percentile(values, 50) == 3.0
    assert percentile(values, 90) == pytest.approx(4.6)
    assert percentile(values, 99) == pytest.approx(4.96)
    assert percentile([7.0], 99) == 7.0


def test_summarize_definitions():
    a = RequestResult(ok=True, prompt_tokens=10, output_tokens=5, ttft=0.1, e2e=0.5, itl=[0.1, 0.1, 0.1, 0.1])
    b = RequestResult(ok=True, prompt_tokens=20, output_tokens=1, ttft=0.2, e2e=0.2)
    failed = RequestResult(error="HTTP 500: boom")
    s = summarize([a, b, failed], duration=2.0)
    assert (s["completed"], s["failed"], s["errors"]) == (2, 1, ["HTTP 500: boom"])
    assert s["tpot_ms"]["mean"] == pytest.approx(100.0), "(0.5 - 0.1) / (5 - 1); one-token requests have no TPOT"
    assert s["ttft_ms"]["mean"] == pytest.approx(150.0)
    assert s["request_throughput"] == 1.0 and s["output_tok_s"] == 3.0
    assert s["total_token_throughput"] == 18.0


def test_a_stream_whose_tokens_decode_to_no_text_still_completes():
    """Greedy decoding of random weights can repeat a token that decodes to nothing: the server ends
    the stream with a finish reason and usage but no text; the client counts it, it did not fail."""
    import asyncio

    import httpx

    from ingot.bench.serve import stream_one

    chunks = [{"choices": [{"index": 0, "text": "", "finish_reason": "length"}]},
              {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 4}}]
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"

    async def run():
        transport = httpx.MockTransport(lambda request: httpx.Response(200, text=body))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await stream_one(client, {"prompt": "x", "max_tokens": 4, "stream": True})

    result = asyncio.run(run())
    assert result.ok and result.error == "" and result.output_tokens == 4 and result.ttft is not None
