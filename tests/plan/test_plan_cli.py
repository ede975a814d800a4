"""`ingot plan` through ingot.cli.main: table, --json, config.json and engine directories."""

from __future__ import annotations

import json
import shlex

import pytest

from ingot.cli import main
from ingot.config import BuildConfig, ModelConfig

LLAMA_8B_HF = {  # the shape of shared/configs/llama-3.1-8b.json
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256,
    "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32, "num_hidden_layers": 32,
    "num_key_value_heads": 8, "max_position_embeddings": 131072, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
}
MIXTRAL_HF = {
    "architectures": ["MixtralForCausalLM"], "vocab_size": 32000, "hidden_size": 4096,
    "intermediate_size": 14336, "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
    "num_local_experts": 8, "num_experts_per_tok": 2, "max_position_embeddings": 32768, "torch_dtype": "bfloat16",
}


def _json_plan(capsys, *argv):
    assert main(["plan", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_table_output(capsys):
    assert main(["plan", "--model", "70b", "--gpu", "h100", "--precision", "fp8",
                 "--isl", "8192", "--osl", "2048", "--batch", "64"]) == 0
    out = capsys.readouterr().out
    for text in ("llama-3.1-70b", "H100 SXM 80GB", "ISL 8,192 + OSL 2,048", "TP4 PP1", "recommended",
                 "memory/GPU", "throughput", "decode",
                 "  ingot build ./Llama-3.1-70B-Instruct -o engines/llama-3.1-70b-fp8-tp4pp1 --dtype bf16 --quant fp8 "
                 "--tp 4 --max-batch-size 64 --max-input-len 8192 --max-seq-len 10240 ", "assumptions"):
        assert text in out, text
    # ingot build has --tp and --quant fp8: a TP4 fp8 command, without the default `--pp 1`.
    assert "cannot build" not in out and "--pp" not in out and "yet" not in out


def test_table_output_one_gpu_command(capsys):
    assert main(["plan", "--model", "8b", "--gpu", "h100", "--precision", "fp8", "--isl", "8192",
                 "--osl", "2048", "--batch", "16", "--num-gpus", "1"]) == 0
    out = capsys.readouterr().out
    for text in ("  ingot build ./Llama-3.1-8B-Instruct -o engines/llama-3.1-8b-fp8-tp1pp1 --dtype bf16 --quant fp8 ",
                 "--max-batch-size 16", "--max-seq-len 10240", "note: download meta-llama/Llama-3.1-8B-Instruct"):
        assert text in out, text
    assert "yet" not in out


def test_table_output_unsupported_architecture(capsys):
    assert main(["plan", "--model", "mixtral-8x7b", "--gpu", "h100", "--num-gpus", "2"]) == 0
    out = capsys.readouterr().out
    for text in ("recommended  TP2 PP1", "none: `ingot build` cannot build this plan yet",
                 "note: `ingot build` does not build MixtralForCausalLM yet (it builds LlamaForCausalLM, "):
        assert text in out, text
    assert "  ingot build" not in out and "--tp 2" not in out  # the architecture note, not the flags one


def test_json_output_is_the_plan(capsys):
    plan = _json_plan(capsys, "--model", "8b", "--gpu", "h100", "--concurrency", "16", "--num-gpus", "1")
    assert plan["envelope"]["concurrency"] == 16 and plan["fits"]
    assert set(plan) >= {"model", "gpu", "precision", "envelope", "layouts", "recommendation", "assumptions"}
    row = plan["layouts"][0]
    assert set(row["memory_gb"]) == {"capacity", "weights", "kv_envelope", "activations", "overhead", "kv_pool"}
    assert set(row["perf"]) >= {"decode_tok_s", "tpot_ms", "prefill_tok_s", "ttft_ms", "output_tok_s"}


def test_batch_and_concurrency_are_exclusive(capsys):
    with pytest.raises(SystemExit):
        main(["plan", "--model", "8b", "--gpu", "h100", "--batch", "4", "--concurrency", "4"])


def test_build_command_flags_parse_back(capsys):
    plan = _json_plan(capsys, "--model", "qwen2.5-72b", "--gpu", "h200", "--precision", "int4_awq",
                      "--kv-cache-dtype", "fp8", "--isl", "4096", "--osl", "1024", "--batch", "32", "--num-gpus", "1")
    rec = plan["recommendation"]
    words = shlex.split(rec["build_command"])
    flags = dict(zip(words[3::2], words[4::2], strict=True))  # after `ingot build MODEL`
    assert words[:3] == ["ingot", "build", "./Qwen2.5-72B-Instruct"]  # a local folder, not the hub id
    # `ingot build` has --quant int4_awq and --kv-cache-dtype fp8, which both calibrate on a text
    assert (flags["--quant"], flags["--calib-data"], flags["--kv-cache-dtype"]) == ("int4_awq", "./calibration.txt",
                                                                                    "fp8")
    assert "--tp" not in flags
    notes = "\n".join(rec["build_notes"])
    assert "yet" not in notes and "in ./calibration.txt first" in notes
    assert "--quant int4_awq fits its scales" in notes and "--kv-cache-dtype fp8 sets each layer's K and V" in notes
    build = BuildConfig(dtype=flags["--dtype"], max_batch_size=int(flags["--max-batch-size"]),
                        max_input_len=int(flags["--max-input-len"]), max_seq_len=int(flags["--max-seq-len"]),
                        max_num_tokens=int(flags["--max-num-tokens"]))
    assert (build.max_batch_size, build.max_input_len, build.max_seq_len) == (32, 4096, 5120)
    two = _json_plan(capsys, "--model", "qwen2.5-72b", "--gpu", "h200", "--precision", "int4_awq",
                     "--isl", "4096", "--osl", "1024", "--batch", "32", "--num-gpus", "2")["recommendation"]
    words = shlex.split(two["build_command"])
    flags = dict(zip(words[3::2], words[4::2], strict=True))
    assert two["layout"]["layout"] == "TP2 PP1" and (flags["--tp"], flags["--quant"]) == ("2", "int4_awq")
    assert not any("no `--quant int4_awq` yet" in n for n in two["build_notes"])


def test_model_from_config_json(tmp_path, capsys):
    path = tmp_path / "llama-3.1-8b.json"
    path.write_text(json.dumps(LLAMA_8B_HF))
    plan = _json_plan(capsys, "--model", str(path), "--gpu", "h100")
    assert plan["model"]["kv_bytes_per_token"] == 131_072
    assert plan["model"]["params_b"] == pytest.approx(8.03, abs=0.01)
    assert plan["recommendation"]["build_command"].startswith(f"ingot build {tmp_path} ")
    # The folder holds only a config: the note says what ingot build also needs there.
    assert any("is not a whole checkpoint yet" in n for n in plan["recommendation"]["build_notes"])


def test_model_from_checkpoint_dir_with_moe_config(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(MIXTRAL_HF))
    plan = _json_plan(capsys, "--model", str(tmp_path), "--gpu", "h100", "--num-gpus", "2")
    assert plan["model"]["moe"] and plan["model"]["experts"] == 8
    assert plan["model"]["params_b"] == pytest.approx(46.7, rel=0.01)
    assert any(r["ep"] == 2 for r in plan["layouts"])
    # The architecture comes from the config.json, and `ingot build` has no Mixtral model.
    rec = plan["recommendation"]
    assert rec["build_command"] is None and "does not build MixtralForCausalLM yet" in rec["build_notes"][0]


def test_model_from_engine_dir(tmp_path, capsys):
    config = ModelConfig.from_hf(LLAMA_8B_HF)
    engine = tmp_path / "llama8b-fp16"
    engine.mkdir()
    build = {"dtype": "fp16", "max_batch_size": 8, "max_input_len": 1024, "max_seq_len": 2048}
    (engine / "engine.json").write_text(json.dumps({"model": config.to_dict(), "build": build}))
    plan = _json_plan(capsys, "--model", str(engine), "--gpu", "l40s")
    assert plan["model"]["name"] == "llama8b-fp16" and plan["model"]["kv_bytes_per_token"] == 131_072
    assert plan["precision"]["name"] == "fp16"  # taken from the engine when --precision is absent
    # engine.json records no source: a placeholder MODEL and a note saying what to put there.
    assert plan["recommendation"]["build_command"].startswith("ingot build CHECKPOINT_DIR ")
    assert "replace CHECKPOINT_DIR" in plan["recommendation"]["build_notes"][0]


def test_model_from_engine_dir_rebuilds_from_its_source(tmp_path, capsys):
    checkpoint = tmp_path / "Llama-3.1-8B"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps(LLAMA_8B_HF))
    (checkpoint / "model.safetensors").write_bytes(b"")
    engine = tmp_path / "engine"
    engine.mkdir()
    record = {"model": ModelConfig.from_hf(LLAMA_8B_HF).to_dict(), "build": {"dtype": "bf16"},
              "source": str(checkpoint), "load_format": "auto"}
    (engine / "engine.json").write_text(json.dumps(record))
    rec = _json_plan(capsys, "--model", str(engine), "--gpu", "h100")["recommendation"]
    assert rec["build_command"].startswith(f"ingot build {checkpoint} -o ")
    assert rec["build_notes"] == []  # a whole checkpoint, bf16 as planned: nothing to add
