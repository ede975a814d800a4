"""Tiny checkpoints for tests: Hugging Face folders written by transformers, GGUFs written by gguf.

Plain functions, no fixtures. The hub is unreachable, so tokenizers are built here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

TINY_SHAPE = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
CHAT_TEMPLATE = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
SPECIALS = ["<unk>", "<s>", "</s>"]


def tiny_hf_config(arch: str, **overrides):
    """A transformers config of `arch` (llama, qwen2, qwen3, mistral) at toy size."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config, "mistral": MistralConfig}[arch]
    extra = {"head_dim": 32} if arch == "qwen3" else {}  # head_dim != hidden / heads, as in real Qwen3
    return cls(**{**TINY_SHAPE, **extra, "bos_token_id": 1, "eos_token_id": 2, **overrides})


def save_tiny_model(folder: Path, arch: str = "llama", *, max_shard_size: str | None = None,
                    dtype: torch.dtype = torch.float32, template_as: str | None = "jinja",
                    **overrides) -> dict[str, torch.Tensor]:
    """Write model + tokenizer with save_pretrained; return the model's state_dict."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_hf_config(arch, **overrides)).to(dtype)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(folder, **kwargs)
    save_tiny_tokenizer(folder, template_as=template_as)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def tiny_tokenizer():
    """A character-level WordLevel tokenizer that adds <s> in front, like Llama 2's."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors

    chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,!?:'\n"
    vocab = {t: i for i, t in enumerate([*SPECIALS, *chars])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.add_special_tokens([AddedToken(t, special=True) for t in SPECIALS])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tok


def save_tiny_tokenizer(folder: Path, template_as: str | None = "jinja") -> None:
    """template_as: 'jinja' (transformers 5's chat_template.jinja), 'json' (chat_template.json),
    'config' (inside tokenizer_config.json, transformers 4) or None (no template)."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tiny_tokenizer(), bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")
    if template_as == "jinja":
        fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    if template_as == "json":
        (folder / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}))
    elif template_as == "config":
        path = folder / "tokenizer_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "chat_template": CHAT_TEMPLATE}))


# -- GGUF ------------------------------------------------------------------------------------------


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf.py does to llama q/k rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def byte_level_vocab() -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges): three control tokens, the 256 byte symbols, a few merges."""
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = sorted(ByteLevel.alphabet())
    merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "1 2"]
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *alphabet,
              *("".join(m.split(" ")) for m in merges), "<think>"]
    types = [3, 3, 3] + [1] * (len(tokens) - 4) + [4]
    return tokens, types, merges


def write_tiny_gguf(path: Path, arch: str, tensors: dict[str, np.ndarray], *, tokens: list[str],
                    token_types: list[int], merges: list[str] | None = None, pre: str = "gpt-2",
                    tokenizer_model: str = "gpt2", scores: list[float] | None = None,
                    heads: int = 4, kv_heads: int = 2, head_dim: int | None = None, quant: str = "F32",
                    chat_template: str | None = CHAT_TEMPLATE, add_bos: bool | None = False,
                    extra_keys: dict | None = None) -> None:
    """A GGUF of `arch` whose tensors (GGUF names, torch-order float32 arrays) are stored as `quant`
    (F32, F16 or Q8_0; 1-D tensors stay F32, as llama.cpp keeps norms)."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    hidden = tensors["token_embd.weight"].shape[1]
    w.add_block_count(sum(name.endswith("attn_norm.weight") for name in tensors))
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(tensors["blk.0.ffn_up.weight"].shape[0])
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    if head_dim:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_tokenizer_model(tokenizer_model)
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(token_types)
    if merges is not None:
        w.add_token_merges(merges)
    if scores is not None:
        w.add_token_scores(scores)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    if add_bos is not None:
        w.add_add_bos_token(add_bos)
    if chat_template:
        w.add_chat_template(chat_template)
    for key, value in (extra_keys or {}).items():
        w.add_string(key, value) if isinstance(value, str) else w.add_float32(key, value)
    qtype = gguf.GGMLQuantizationType[quant]
    for name, array in tensors.items():
        array = np.ascontiguousarray(array, dtype=np.float32)
        if array.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, array)
        elif qtype == gguf.GGMLQuantizationType.F16:
            w.add_tensor(name, array.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def random_gguf_tensors(arch: str, vocab: int, *, hidden: int = 64, inter: int = 128, layers: int = 2,
                        heads: int = 4, kv_heads: int = 2, head_dim: int = 16, tied: bool = True,
                        seed: int = 0) -> dict[str, np.ndarray]:
    """HF-layout random weights under GGUF names (llama q/k not yet permuted)."""
    rng = np.random.default_rng(seed)
    rand = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    out = {"token_embd.weight": rand(vocab, hidden), "output_norm.weight": rand(hidden)}
    if not tied:
        out["output.weight"] = rand(vocab, hidden)
    for i in range(layers):
        b = f"blk.{i}."
        q, kv = heads * head_dim, kv_heads * head_dim
        out |= {b + "attn_q.weight": rand(q, hidden), b + "attn_k.weight": rand(kv, hidden),
                b + "attn_v.weight": rand(kv, hidden), b + "attn_output.weight": rand(hidden, q),
                b + "ffn_gate.weight": rand(inter, hidden), b + "ffn_up.weight": rand(inter, hidden),
                b + "ffn_down.weight": rand(hidden, inter), b + "attn_norm.weight": rand(hidden),
                b + "ffn_norm.weight": rand(hidden)}
        if arch == "qwen2":
            out |= {b + "attn_q.bias": rand(heads * head_dim), b + "attn_k.bias": rand(kv_heads * head_dim),
                    b + "attn_v.bias": rand(kv_heads * head_dim)}
        if arch == "qwen3":
            out |= {b + "attn_q_norm.weight": rand(head_dim), b + "attn_k_norm.weight": rand(head_dim)}
    return out
