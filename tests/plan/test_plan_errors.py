"""Bad inputs give clear errors listing the valid choices; precisions a GPU can't run are flagged."""

from __future__ import annotations

import pytest

from ingot.cli import main
from ingot.errors import ConfigError
from ingot.plan.planner import make_plan


@pytest.mark.parametrize("kwargs, words", [
    (dict(model="llama-9000", gpu="h100"),
     ["unknown model 'llama-9000'", "llama-3.1-8b", "deepseek-v3", "config.json"]),
    (dict(model="8b", gpu="tpu-v5"), ["unknown GPU 'tpu-v5'", "h100-sxm", "a100-40gb", "gb200"]),
    (dict(model="8b", gpu="h100", precision="int3"), ["unknown precision 'int3'", "bf16", "int4_awq", "nvfp4"]),
    (dict(model="8b", gpu="h100", kv_cache_dtype="fp4"), ["unknown --kv-cache-dtype 'fp4'", "fp8", "int8"]),
    (dict(model="8b", gpu="h100", isl=-5), ["--isl must be a positive integer", "-5"]),
    (dict(model="8b", gpu="h100", osl=0), ["--osl must be a positive integer"]),
    (dict(model="8b", gpu="h100", concurrency=-1), ["--batch/--concurrency must be a positive integer"]),
    (dict(model="8b", gpu="h100", num_gpus=0), ["--num-gpus must be a positive integer"]),
])
def test_bad_input_names_field_and_choices(kwargs, words):
    with pytest.raises(ConfigError) as info:
        make_plan(**kwargs)
    for word in words:
        assert word in str(info.value)


def test_cli_reports_bad_input_on_stderr(capsys):
    assert main(["plan", "--model", "8b", "--gpu", "v100"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ingot plan: error: unknown GPU 'v100'") and "h100-pcie" in err


def test_cli_requires_model_and_gpu(capsys):
    assert main(["plan", "--gpu", "h100"]) == 2
    err = capsys.readouterr().err
    assert "--model" in err and "llama-3.1-70b" in err


def test_bad_config_path(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read JSON"):
        make_plan(str(bad), "h100")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="neither a config.json"):
        make_plan(str(empty), "h100")


def test_fp8_on_a100_is_flagged_with_fallback():
    plan = make_plan("llama-3.1-8b", "a100-80gb", "fp8", kv_cache_dtype="fp8")
    prec = plan["precision"]
    assert not prec["native"] and prec["runs_as"] == "bf16" and prec["kv_cache_dtype"] == "int8"
    notes = " ".join(prec["notes"])
    assert "no FP8 tensor cores" in notes and "dequantizes them to bf16" in notes
    assert "int8" in notes
    assert plan["weights_gb"] < 10  # still stored as fp8: memory as fp8


def test_nvfp4_on_h100_is_flagged_with_fallback():
    prec = make_plan("llama-3.1-70b", "h100", "nvfp4")["precision"]
    assert not prec["native"] and prec["runs_as"] == "fp8"
    assert "no FP4 tensor cores" in prec["notes"][0] and "W4A8" in prec["notes"][0]


def test_fp4_on_ada_without_fp8_path_and_blackwell_native():
    assert make_plan("llama-3.1-8b", "a100", "mxfp4")["precision"]["runs_as"] == "bf16"
    b200 = make_plan("llama-3.1-70b", "b200", "nvfp4")["precision"]
    assert b200["native"] and b200["runs_as"] == "fp4" and b200["notes"] == []


def test_native_precisions_have_no_notes():
    for gpu, precision in [("h100", "fp8"), ("l40s", "fp8"), ("a100", "w8a8_sq"), ("rtx-4090", "int4_awq")]:
        assert make_plan("llama-3.1-8b", gpu, precision)["precision"]["native"], (gpu, precision)


def test_context_beyond_model_is_warned():
    plan = make_plan("mistral-7b", "h100", "bf16", isl=32000, osl=2000, concurrency=1)
    assert any("exceeds the model's context" in w for w in plan["warnings"])
