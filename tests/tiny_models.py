"""Tiny random Hugging Face checkpoints of each supported architecture, saved by transformers
itself, with a small byte-level tokenizer, for parity and end-to-end tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIAL_TOKENS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"]

BASE = dict(hidden_size=72, intermediate_size=100, num_hidden_layers=2, num_attention_heads=6,
            num_key_value_heads=2, vocab_size=311, max_position_embeddings=512, rms_norm_eps=1e-5,
            rope_theta=10000.0, bos_token_id=256, eos_token_id=257, tie_word_embeddings=False)


def hf_config(arch: str, **overrides):
    import transformers

    fields = {**BASE, **overrides}
    config_class = {
        "LlamaForCausalLM": transformers.LlamaConfig,
        "MistralForCausalLM": transformers.MistralConfig,
        "Qwen2ForCausalLM": transformers.Qwen2Config,
        "Qwen3ForCausalLM": transformers.Qwen3Config,
    }[arch]
    if arch == "Qwen3ForCausalLM":
        fields.setdefault("head_dim", 16)
    return config_class(architectures=[arch], **fields)


def make_checkpoint(directory: Path, arch: str = "LlamaForCausalLM", seed: int = 0, **overrides):
    """Save a random model and tokenizer to directory; return the transformers model (fp32, eval)."""
    import transformers

    torch.manual_seed(seed)
    config = hf_config(arch, **overrides)
    model = transformers.AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32).eval()
    with torch.no_grad():  # default init leaves biases and norms trivial; make them matter
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(torch.randn_like(param) * 0.1)
    model.save_pretrained(directory)
    write_tokenizer(directory)
    return model


def write_tokenizer(directory: Path) -> None:
    """A byte-level BPE over the 256 bytes (no merges) plus special tokens, ids 256.."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(byte_chars))}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>", "add_bos_token": False, "chat_template": CHATML,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }))
