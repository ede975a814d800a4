"""Benchmark records: the floors from an engine's config, and the records `ingot bench` writes."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pytest

from ingot.bench import floors
from ingot.cli import main
from ingot.config import ModelConfig, QuantConfig

LLAMA_8B = Path(__file__).resolve().parents[2] / "bench" / "configs" / "llama-3.1-8b.json"

# BENCHMARKS.md's header fields, and what each kind of record adds
HEADER = ("device", "commit", "command", "date", "model", "dtype", "quant", "isl", "osl", "copy_tbps",
          "matmul_tflops", "engine", "benchmark")
LATENCY = ("batch_size", "decode_tok_s", "decode_tok_s_total", "ttft_ms", "tpot_ms", "decode_step_bytes",
           "decode_floor_tok_s", "decode_floor_ratio")
THROUGHPUT = ("num_requests", "output_tok_s", "flops_per_output_token", "compute_ceiling_tok_s",
              "compute_ceiling_ratio", "preemptions")


@pytest.fixture(scope="module")
def llama_8b() -> ModelConfig:
    return ModelConfig.from_hf(json.loads(LLAMA_8B.read_text()))


def test_llama_8b_decode_step_reads_15_01_gb_of_weights(llama_8b):
    # by hand: per layer q/k/v 4096 x (4096 + 2 x 1024), o 4096 x 4096, gate/up/down 3 x 4096 x 14336;
    # 32 layers; lm_head 128256 x 4096; bf16 = 2 bytes; the embedding table is not read
    per_layer = 4096 * 6144 + 4096 * 4096 + 3 * 4096 * 14336
    linear = (32 * per_layer + 128256 * 4096) * 2
    parts = floors.decode_step_bytes(llama_8b, "bf16", batch=1, mean_context=0)
    assert parts["linear_weights"] == linear == 15_009_316_864
    assert parts["norm_weights"] == 65 * 4096 * 2 and parts["embedding_rows"] == 4096 * 2
    assert parts["kv_cache"] == 0 and round(parts["total"] / 1e9, 2) == 15.01


def test_kv_bytes_grow_with_batch_and_context(llama_8b):
    # K and V: 2 x 32 layers x 8 heads x 128 x 2 bytes = 131,072 bytes per token of context
    parts = floors.decode_step_bytes(llama_8b, "bf16", batch=4, mean_context=192)
    assert parts["kv_cache"] == 4 * 192 * 131_072


def test_int4_bytes_come_from_the_method_itself(llama_8b):
    """Codes (half a byte), a bf16 scale and a uint8 zero per group of 128; the lm_head stays bf16."""
    parts = floors.decode_step_bytes(llama_8b, "bf16", 1, 0, QuantConfig("int4_rtn", {"group_size": 128}))
    block = floors.block_linear_params(llama_8b)
    assert parts["linear_weights"] == block // 2 + (block // 128) * 3 + 128256 * 4096 * 2


def test_llama_8b_flops_per_token(llama_8b):
    # a decode token at context c: 2 x (block linears + lm_head) + 4 x 32 layers x 4096 x c
    block = floors.block_linear_params(llama_8b)
    assert block == 32 * (4096 * 6144 + 4096 * 4096 + 3 * 4096 * 14336)
    lm_head = 2 * 128256 * 4096
    prompt = 2 * 2 * block + 4 * 32 * 4096 * (1 + 2) + lm_head  # isl 2: contexts 1 and 2
    decode = 2 * block + lm_head + 4 * 32 * 4096 * 3  # the one decode step of osl 2 sees 3 positions
    assert floors.request_flops(llama_8b, 2, 2) == pytest.approx(prompt + decode)
    assert floors.flops_per_output_token(llama_8b, [(2, 2), (2, 2)]) == pytest.approx((prompt + decode) / 2)


@pytest.fixture(scope="module")
def latency_record(tiny_engine, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("records") / "latency.json"
    assert main(["bench", "latency", str(tiny_engine), "--isl", "12", "--osl", "6", "--batch-size", "2",
                 "--repeats", "2", "--json", str(out), "--device", "cpu"]) == 0
    return json.loads(out.read_text())


def test_latency_record_has_every_field_and_its_ratio_recomputes(latency_record):
    record = latency_record
    assert not [f for f in HEADER + LATENCY if f not in record]
    assert record["command"].startswith("ingot bench latency ") and "--batch-size 2" in record["command"]
    assert record["device"].startswith("cpu") and record["commit"]
    floor = record["batch_size"] * record["copy_tbps"] * 1e12 / record["decode_step_bytes"]
    assert record["decode_floor_tok_s"] == pytest.approx(floor, rel=1e-6)
    assert record["decode_floor_ratio"] == pytest.approx(record["decode_tok_s_total"] / record["decode_floor_tok_s"],
                                                         abs=1e-4)
    assert record["decode_step_bytes"] == record["decode_step_bytes_parts"]["total"]
    assert len(record["runs"]) == 2 and record["copy_tbps"] > 0 and record["matmul_tflops"] > 0


def test_throughput_record_has_every_field_and_its_ratio_recomputes(tiny_engine, tmp_path):
    out = tmp_path / "throughput.json"
    profile = tmp_path / "profile"
    assert main(["bench", "throughput", str(tiny_engine), "--isl", "10", "--osl", "5", "--num-requests", "12",
                 "--random-lengths", "--json", str(out), "--device", "cpu", "--profile-dir", str(profile),
                 "--profile-steps", "2:3"]) == 0
    assert gc.get_freeze_count() == 0, "the command thaws the heap it froze for the run"
    record = json.loads(out.read_text())
    timeline = record["steps_timeline"]
    assert timeline["decode_steps"] + timeline["prompt_steps"] == record["steps"]
    assert timeline["prompt_steps"] >= 1 and timeline["decode_steps"] >= 1
    assert sum(b["steps"] for b in timeline["decode_ms_per_step_by_batch"].values()) == timeline["decode_steps"]
    assert timeline["decode_s"] + timeline["prompt_s"] <= record["elapsed_s"]
    assert len(timeline["profiled_steps"]) == 3
    assert "aten::" in (profile / "kernels.txt").read_text()
    assert json.loads((profile / "kernels.json").read_text())["top"] and (profile / "trace.json").stat().st_size
    assert not [f for f in HEADER + THROUGHPUT if f not in record]
    # elapsed_s is rounded to the millisecond: on a run this short that alone moves the rate
    rate = record["output_tokens"] / record["elapsed_s"]
    assert record["output_tok_s"] == pytest.approx(rate, rel=1e-3 + 0.0006 / record["elapsed_s"])
    assert record["recomputed_tokens"] >= 0 and record["computed_tokens"] >= record["output_tokens"]
    ceiling = record["matmul_tflops"] * 1e12 / record["flops_per_output_token"]
    assert record["compute_ceiling_tok_s"] == pytest.approx(ceiling, rel=1e-6)
    assert record["compute_ceiling_ratio"] == pytest.approx(record["output_tok_s"] / record["compute_ceiling_tok_s"],
                                                            abs=1e-4)


def test_commit_comes_from_the_environment_when_given(monkeypatch):
    from ingot.bench.record import header

    monkeypatch.setenv("INGOT_COMMIT", "abc123")
    assert header("cpu", ["bench", "latency", "E"])["commit"] == "abc123"
    assert header("cpu", ["bench", "latency", "my engine"])["command"] == "ingot bench latency 'my engine'"


def test_peer_config_has_the_engine_shapes(tiny_engine):
    from ingot.bench.peer import hf_config
    from ingot.engine_format import read_spec

    spec = read_spec(tiny_engine)
    config = hf_config(spec.model.to_dict(), spec.dtype)
    assert (config.hidden_size, config.num_hidden_layers, config.num_key_value_heads, config.vocab_size) == (
        spec.model.hidden_size, spec.model.num_layers, spec.model.num_kv_heads, spec.model.vocab_size)


def test_fp8_ceiling_adds_the_fp8_and_the_model_dtype_times(llama_8b):
    """An FP8 engine's block linears run at the FP8 matmul rate, the lm_head and attention at the
    bf16 one: the ceiling is one token's time summed over the two, recomputable from the record."""
    from types import SimpleNamespace

    from ingot.bench.record import add_compute_ceiling

    record = {"matmul_tflops": 800.0, "matmul_fp8_tflops": 1600.0, "output_tok_s": 1000.0}
    add_compute_ceiling(record, SimpleNamespace(model=llama_8b), [(128, 128)])
    fp8, total = record["flops_per_output_token_fp8"], record["flops_per_output_token"]
    assert 0.8 * total < fp8 < total
    seconds = fp8 / 1600e12 + (total - fp8) / 800e12
    assert record["compute_ceiling_tok_s"] == pytest.approx(1 / seconds, rel=1e-6)
    assert 800e12 / total < record["compute_ceiling_tok_s"] < 1600e12 / total
