"""GGUF checkpoints: tiny files written with gguf.GGUFWriter, and the real SmolLM2 Q4_1 (slow)
checked against what transformers makes of the same file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from ingot.builder.checkpoint import load_checkpoint
from ingot.builder.gguf_checkpoint import hf_tensor_name
from ingot.builder.presets import resolve_preset
from ingot.config import ModelConfig
from ingot.errors import CheckpointError
from tests.helpers_checkpoints import (
    CHAT_TEMPLATE, byte_level_vocab, llama_cpp_permute, random_gguf_tensors, write_tiny_gguf,
)

TEXTS = [
    "Hello world!", "The quick brown fox jumps over the lazy dog.", "12345", "I have 12345 apples and 7.5 pears",
    "def f(x):\n    return x ** 2  # square\n", "emoji 😀🎉 👍🏽", "Café, naïve, résumé, Ærøskøbing",
    "中文字符测试 日本語のテキスト 한국어", "spaces    and\ttabs\n\n\nnewlines   ", " leading space",
    "don't we'll I'M",
    "<|im_start|>user\nhi<|im_end|>\n", "URL: https://example.com/a?b=1&c=2", "",
]


def gguf_with(tmp_path: Path, arch: str, tensors: dict, name: str = "m.gguf", **kwargs) -> Path:
    tokens, types, merges = byte_level_vocab()
    path = tmp_path / name
    write_tiny_gguf(path, arch, tensors, tokens=tokens, token_types=types, merges=merges, **kwargs)
    return path


# -- weights and config ---------------------------------------------------------------------------


@pytest.mark.parametrize("quant, atol", [("F32", 0.0), ("F16", 2e-3), ("Q8_0", 0.05)])
def test_llama_gguf_unpermutes_q_and_k(tmp_path, quant, atol):
    vocab = len(byte_level_vocab()[0])
    hf = random_gguf_tensors("llama", vocab)  # HF row order
    stored = {k: llama_cpp_permute(v, 4 if "attn_q." in k else 2) if ("attn_q." in k or "attn_k." in k) else v
              for k, v in hf.items()}
    ckpt = load_checkpoint(gguf_with(tmp_path, "llama", stored, quant=quant))
    got = dict(ckpt.tensors())
    assert sorted(got) == sorted(hf_tensor_name(k, tmp_path) for k in hf)
    for gguf_name, expected in hf.items():
        tensor = got[hf_tensor_name(gguf_name, tmp_path)]
        assert tensor.dtype == torch.float32 and tensor.shape == expected.shape
        torch.testing.assert_close(tensor, torch.from_numpy(expected), atol=atol, rtol=0, msg=gguf_name)
    cfg = ModelConfig.from_hf(ckpt.hf_config)
    assert (cfg.architecture, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads) == ("LlamaForCausalLM", 2, 4, 2)
    assert (cfg.head_dim, cfg.vocab_size, cfg.tie_word_embeddings) == (16, vocab, True)
    assert (cfg.bos_token_id, cfg.eos_token_ids, cfg.checkpoint_dtype) == (1, (2,), "fp32")


def test_hf_names():
    assert hf_tensor_name("blk.12.attn_output.weight", Path()) == "model.layers.12.self_attn.o_proj.weight"
    assert hf_tensor_name("blk.0.ffn_norm.weight", Path()) == "model.layers.0.post_attention_layernorm.weight"
    assert hf_tensor_name("blk.3.attn_k_norm.weight", Path()) == "model.layers.3.self_attn.k_norm.weight"
    assert hf_tensor_name("output.weight", Path()) == "lm_head.weight"
    with pytest.raises(CheckpointError, match="blk.0.ssm_a"):
        hf_tensor_name("blk.0.ssm_a", Path("x.gguf"))


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_qwen_gguf_is_not_permuted(tmp_path, arch):
    vocab = len(byte_level_vocab()[0])
    head_dim = 32 if arch == "qwen3" else 16  # Qwen3: head_dim from attention.key_length, not hidden/heads
    hf = random_gguf_tensors(arch, vocab, head_dim=head_dim, tied=False)
    ckpt = load_checkpoint(gguf_with(tmp_path, arch, hf, head_dim=head_dim if arch == "qwen3" else None))
    got = dict(ckpt.tensors())
    for gguf_name, expected in hf.items():
        assert torch.equal(got[hf_tensor_name(gguf_name, tmp_path)], torch.from_numpy(expected)), gguf_name
    assert "lm_head.weight" in got and ckpt.hf_config["tie_word_embeddings"] is False
    cfg = ModelConfig.from_hf(ckpt.hf_config)
    assert cfg.head_dim == head_dim
    assert cfg.qkv_bias == (arch == "qwen2") and cfg.qk_norm == (arch == "qwen3")
    assert ("model.layers.1.self_attn.q_norm.weight" in got) == (arch == "qwen3")


def test_linear_rope_scaling(tmp_path):
    hf = random_gguf_tensors("llama", len(byte_level_vocab()[0]))
    path = gguf_with(tmp_path, "llama", hf, extra_keys={"llama.rope.scaling.type": "linear",
                                                         "llama.rope.scaling.factor": 4.0})
    cfg = ModelConfig.from_hf(load_checkpoint(path).hf_config)
    assert cfg.rope_scaling == {"rope_type": "linear", "factor": 4.0}


def test_unsupported_gguf_errors(tmp_path):
    hf = random_gguf_tensors("llama", len(byte_level_vocab()[0]))
    with pytest.raises(CheckpointError, match=r"architecture 'gemma'.*llama, qwen2, qwen3"):
        load_checkpoint(gguf_with(tmp_path, "gemma", hf, name="g.gguf"))
    with pytest.raises(CheckpointError, match=r"pre-tokenizer 'tekken'.*smollm"):
        load_checkpoint(gguf_with(tmp_path, "llama", hf, name="p.gguf", pre="tekken"))
    with pytest.raises(CheckpointError, match=r"tokenizer model 'bert'"):
        load_checkpoint(gguf_with(tmp_path, "llama", hf, name="t.gguf", tokenizer_model="bert"))
    with pytest.raises(CheckpointError, match="rope_freqs"):
        load_checkpoint(gguf_with(tmp_path, "llama", {**hf, "rope_freqs.weight": np.ones(8, np.float32)},
                                  name="r.gguf"))


# -- tokenizers -----------------------------------------------------------------------------------


def test_byte_level_tokenizer_from_tiny_vocab(tmp_path):
    hf = random_gguf_tensors("llama", len(byte_level_vocab()[0]))
    ckpt = load_checkpoint(gguf_with(tmp_path, "llama", hf, add_bos=True))
    tok = Tokenizer.from_str(ckpt.tokenizer_files["tokenizer.json"].decode())
    vocab = tok.get_vocab()
    enc = tok.encode("the the<|im_end|><think>in 12")
    assert enc.tokens == ["<|im_start|>", "t", "he", "Ġthe", "<|im_end|>", "<think>", "in", "Ġ", "12"]  # BOS added
    assert tok.decode(enc.ids) == "the the<think>in 12"  # control tokens skipped, <think> kept
    assert (vocab["<|im_end|>"], vocab["Ġthe"], vocab["<think>"]) == (2, 261, 265)
    config = json.loads(ckpt.tokenizer_files["tokenizer_config.json"])
    assert (config["bos_token"], config["eos_token"], config["add_bos_token"]) == ("<|im_start|>", "<|im_end|>", True)
    assert config["chat_template"] == CHAT_TEMPLATE
    assert json.loads(ckpt.tokenizer_files["generation_config.json"])["eos_token_id"] == 2


def sentencepiece_vocab() -> tuple[list[str], list[int], list[float]]:
    """A small SentencePiece BPE vocabulary: <unk>/<s>/</s>, 256 byte tokens, pieces ranked by score."""
    pieces = ["▁", *"abcdefghijklmnopqrstuvwxyzH", "▁t", "he", "▁the", "▁a", "in", "▁in", "at", "▁c",
              "▁cat", "▁h", "▁hat", "ll", "▁He", "llo", "▁Hello", "▁▁"]
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *pieces]
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces)
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))]
    return tokens, types, scores


def test_sentencepiece_tokenizer_matches_transformers(tmp_path):
    from transformers import AutoTokenizer

    tokens, types, scores = sentencepiece_vocab()
    hf = random_gguf_tensors("llama", len(tokens))
    path = tmp_path / "spm.gguf"
    write_tiny_gguf(path, "llama", hf, tokens=tokens, token_types=types, scores=scores, tokenizer_model="llama",
                    pre="default", add_bos=None)
    ckpt = load_checkpoint(path)
    ours = Tokenizer.from_str(ckpt.tokenizer_files["tokenizer.json"].decode())
    theirs = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    for text in ["the cat in the hat", "Hello  hat", " leading", "Überhat 😀", "a</s>b", ""]:
        assert ours.encode(text).ids == theirs.encode(text), text
        assert ours.decode(ours.encode(text).ids) == theirs.decode(theirs.encode(text), skip_special_tokens=True)
    assert json.loads(ckpt.tokenizer_files["tokenizer_config.json"])["add_bos_token"] is True


# -- the real SmolLM2 file (slow: transformers dequantizes all of it) -------------------------------


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory) -> Path:
    """A folder holding (a link to) the shipped GGUF, the way transformers wants gguf_file."""
    folder = tmp_path_factory.mktemp("smollm2")
    (folder / "model.gguf").symlink_to(resolve_preset("smollm2"))
    return folder


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    return load_checkpoint(str(smollm2_dir / "model.gguf"))


@pytest.fixture(scope="module")
def hf_tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir, gguf_file="model.gguf")


@pytest.mark.slow
def test_smollm2_config(smollm2):
    hf = smollm2.hf_config
    assert hf["architectures"] == ["LlamaForCausalLM"] and hf["torch_dtype"] == "float32"
    cfg = ModelConfig.from_hf(hf)
    assert (cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.hidden_size) == (30, 9, 3, 576)
    assert (cfg.vocab_size, cfg.head_dim, cfg.intermediate_size, cfg.tie_word_embeddings) == (49152, 64, 1536, True)
    assert cfg.rope_theta == 100000.0 and cfg.max_position_embeddings == 8192


@pytest.mark.slow
def test_smollm2_weights_match_transformers(smollm2, smollm2_transformers):
    """transformers' own GGUF reader (the session's model, shared with the other real-model tests)
    dequantizes to exactly the tensors ingot reads."""
    model, _ = smollm2_transformers
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (9, 3)
    reference = model.state_dict()
    ours = dict(smollm2.tensors())
    assert sorted(ours) == sorted(set(reference) - {"lm_head.weight"})  # tied: no lm_head in the file
    for name, tensor in ours.items():
        torch.testing.assert_close(tensor, reference[name], rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_smollm2_tokenizer_matches_transformers(smollm2, hf_tokenizer):
    ours = Tokenizer.from_str(smollm2.tokenizer_files["tokenizer.json"].decode())
    assert ours.get_vocab_size() == 49152
    for text in TEXTS:
        ids = hf_tokenizer.encode(text)
        assert ours.encode(text).ids == ids, text
        assert ours.decode(ids, skip_special_tokens=False) == hf_tokenizer.decode(ids), text
    # digits one by one, as llama.cpp's "smollm" pre-tokenizer splits them
    assert ours.encode("12345").tokens == ["1", "2", "3", "4", "5"]


@pytest.mark.slow
def test_smollm2_tokenizer_files_load_in_transformers(smollm2, hf_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    for name, content in smollm2.tokenizer_files.items():
        (tmp_path / name).write_bytes(content)
    config = json.loads(smollm2.tokenizer_files["tokenizer_config.json"])
    assert (config["bos_token"], config["eos_token"], config["add_bos_token"]) == ("<|im_start|>", "<|im_end|>", False)
    assert "<|im_start|>" in config["chat_template"]
    ours = AutoTokenizer.from_pretrained(tmp_path)
    chat = [{"role": "user", "content": "What is 2+2?"}]
    expected = hf_tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert ours.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) == expected
    assert ours.encode(expected) == hf_tokenizer.encode(expected)


@pytest.mark.parametrize("pre", ["gpt-2", "smollm", "llama-bpe", "qwen2"])
def test_pre_tokenizers_split_like_transformers(tmp_path, pre):
    """Each pre-tokenizer name must cut text where transformers' (taken from the original
    tokenizer.json files) does; the vocabulary side is the same code the SmolLM2 test checks."""
    from transformers import AutoTokenizer

    hf = random_gguf_tensors("llama", len(byte_level_vocab()[0]))
    path = gguf_with(tmp_path, "llama", hf, pre=pre)
    ours = Tokenizer.from_str(load_checkpoint(path).tokenizer_files["tokenizer.json"].decode())
    theirs = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    for text in TEXTS:
        if pre == "smollm" and any(c.isdigit() for c in text):
            continue  # llama.cpp splits digits one by one here, transformers does not (see "1 2" below)
        if pre != "smollm":
            split = theirs.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text)
            assert ours.pre_tokenizer.pre_tokenize_str(text) == split, text
        assert ours.encode(text).ids == theirs.encode(text), text
    if pre == "smollm":
        assert ours.encode("12").tokens == ["1", "2"]
