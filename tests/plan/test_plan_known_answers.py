"""The known answers from issue 6, and the published shapes behind them."""

from __future__ import annotations

import pytest

from ingot.kv_size import kv_bytes_per_token
from ingot.plan.planner import make_plan
from ingot.plan.presets import PRESETS


def _row(plan, name):
    return next(r for r in plan["layouts"] if r["layout"] == name)


def test_kv_bytes_per_token_llama_8b_bf16():
    shape = PRESETS["llama-3.1-8b"]
    assert shape.kv_bytes_per_token(2) == 131_072 == kv_bytes_per_token(32, 8, 128, 2)
    assert make_plan("llama-3.1-8b", "h100", "bf16")["model"]["kv_bytes_per_token"] == 131_072


def test_llama_8b_bf16_fits_one_h100_with_large_kv():
    plan = make_plan("llama-3.1-8b", "h100-sxm", "bf16", isl=2048, osl=512, concurrency=64, num_gpus=1)
    assert plan["fits"]
    row = _row(plan, "TP1 PP1")
    assert 15.5 < row["memory_gb"]["weights"] < 16.5  # 8.03 B params * 2 bytes
    assert row["kv_tokens"] > 400_000  # > 50 GB of KV at 131,072 bytes/token
    assert plan["recommendation"]["layout"]["layout"] == "TP1 PP1"
    assert "--dtype bf16 --max-batch-size 64" in plan["recommendation"]["build_command"]


def test_llama_70b_bf16_needs_tp_or_pp():
    alone = make_plan("llama-3.1-70b", "h100", "bf16", num_gpus=1)
    assert 140 < alone["weights_gb"] < 142  # "about 141 GB"
    assert not alone["fits"] and not alone["layouts"][0]["fits_weights"]
    assert alone["recommendation"]["build_command"] is None
    auto = make_plan("llama-3.1-70b", "h100", "bf16", isl=1024, osl=256, concurrency=8)
    best = auto["recommendation"]["layout"]
    assert auto["fits"] and best["num_gpus"] >= 2 and (best["tp"] > 1 or best["pp"] > 1)


def test_llama_405b_bf16_does_not_fit_8_h100_but_fp8_does():
    bf16 = make_plan("llama-3.1-405b", "h100", "bf16", num_gpus=8)
    assert not bf16["fits"] and not any(r["fits_weights"] for r in bf16["layouts"])
    assert "does not fit" in bf16["recommendation"]["reason"]
    fp8 = make_plan("llama-3.1-405b", "h100", "fp8", num_gpus=8)
    assert fp8["fits"]
    assert fp8["recommendation"]["layout"]["layout"] == "TP8 PP1"
    # ingot build has --tp and --quant fp8: the TP8 command builds fp8, with no fallback note.
    rec = fp8["recommendation"]
    assert " --dtype bf16 --quant fp8 --tp 8 " in rec["build_command"] and "--pp" not in rec["build_command"]
    assert not any("yet" in n for n in rec["build_notes"]), rec["build_notes"]


# Published totals (and active parameters for MoE), in billions.
PUBLISHED = {
    "llama-3.1-8b": (8.03, None), "llama-3.1-70b": (70.6, None), "llama-3.1-405b": (405.9, None),
    "mistral-7b": (7.25, None), "mixtral-8x7b": (46.7, 12.9), "mixtral-8x22b": (141.0, 39.0),
    "qwen2.5-7b": (7.61, None), "qwen2.5-72b": (72.7, None), "qwen3-30b-a3b": (30.5, 3.3),
    "deepseek-v3": (671.0, 37.0),
}


@pytest.mark.parametrize("name", PUBLISHED)
def test_preset_params_match_published(name):
    total, active = PUBLISHED[name]
    shape = PRESETS[name]
    assert shape.num_params / 1e9 == pytest.approx(total, rel=0.01)
    if active:
        assert shape.active_params / 1e9 == pytest.approx(active, rel=0.03)


def test_mla_kv_is_the_latent():
    # DeepSeek-V3 caches kv_lora_rank 512 + rope 64 per layer, 61 layers, whole on every TP rank.
    shape = PRESETS["deepseek-v3"]
    assert shape.kv_bytes_per_token(2) == 61 * 576 * 2
    assert shape.kv_bytes_per_token(2, tp=8) == 61 * 576 * 2


def test_deepseek_v3_fp8_fits_8_h200_bf16_does_not():
    assert make_plan("deepseek-v3", "h200", "fp8", num_gpus=8)["fits"]
    assert not make_plan("deepseek-v3", "h200", "bf16", num_gpus=8)["fits"]


def test_moe_offers_expert_parallel_layouts():
    plan = make_plan("qwen3-30b-a3b", "h100", "bf16", num_gpus=8)
    names = {r["layout"] for r in plan["layouts"]}
    assert {"TP8 PP1", "TP8 PP1 EP8"} <= names
    # 768-wide experts sliced 8 ways are thin GEMMs: EP wins and says why.
    assert plan["recommendation"]["layout"]["ep"] == 8
    assert "EP keeps" in plan["recommendation"]["reason"]


def test_tp_decodes_faster_than_pp():
    plan = make_plan("llama-3.1-70b", "h100", "bf16", num_gpus=4)
    assert _row(plan, "TP4 PP1")["perf"]["decode_tok_s"] > 2 * _row(plan, "TP1 PP4")["perf"]["decode_tok_s"]


def test_kv_limited_layout_reports_max_concurrency():
    plan = make_plan("llama-3.1-70b", "h100", "fp8", isl=8192, osl=2048, concurrency=64, num_gpus=1)
    row = plan["layouts"][0]
    assert not row["fits"] and row["fits_weights"]
    assert 0 < row["max_concurrency"] < 64 and row["status"].startswith("KV-limited")
    assert row["perf"]["concurrency"] == row["max_concurrency"]


def test_fp8_kv_cache_halves_kv():
    bf16 = make_plan("llama-3.1-8b", "h100", "bf16", num_gpus=1)
    fp8 = make_plan("llama-3.1-8b", "h100", "bf16", kv_cache_dtype="fp8", num_gpus=1)
    assert fp8["model"]["kv_bytes_per_token"] * 2 == bf16["model"]["kv_bytes_per_token"]
    assert fp8["layouts"][0]["kv_tokens"] == pytest.approx(2 * bf16["layouts"][0]["kv_tokens"], rel=0.01)
    # the printed engine stores fp8 KV (its scales calibrated on a text the command names)
    assert "--calib-data ./calibration.txt --kv-cache-dtype fp8" in fp8["recommendation"]["build_command"]
    assert not any("yet" in n for n in fp8["recommendation"]["build_notes"])


def test_decode_floor_is_weights_over_bandwidth():
    # Batch 1, short context: decode time ~ bytes read / (HBM * efficiency) + host overhead,
    # where the bytes are every weight but the input embedding (a lookup of one row).
    plan = make_plan("llama-3.1-8b", "h100", "bf16", isl=128, osl=128, concurrency=1, num_gpus=1)
    a = plan["assumptions"]
    read = plan["weights_gb"] * 1e9 - 128256 * 4096 * 2
    floor_s = read / (3350e9 * a["decode_bw_efficiency"]) + a["step_overhead_s"]
    assert plan["layouts"][0]["perf"]["tpot_ms"] == pytest.approx(floor_s * 1e3, rel=0.05)
