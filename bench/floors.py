"""The floors BENCHMARKS.md defines, computed from a model's config.json (never typed in).

    bytes a decode step reads = every linear weight (q/k/v, o, gate/up, down in every layer, and
        the lm_head) + norm weights + the embedding rows of the step's tokens (not the table)
        + the KV bytes of every sequence's context
    decode floor (tok/s)      = batch x copy bandwidth / bytes a step reads
    FLOPs per token           = 2 x (parameters of every linear layer the token passes)
        + attention 4 x layers x (query heads x head_dim) x context; the lm_head only for tokens
        whose logits are computed (in a prompt: the last one)
    compute ceiling (tok/s)   = matmul rate / FLOPs per output token
"""

from __future__ import annotations


def shape(hf: dict) -> dict:
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    return dict(layers=hf["num_hidden_layers"], hidden=hf["hidden_size"], inter=hf["intermediate_size"],
                vocab=hf["vocab_size"], q=heads * head_dim, kv=(hf.get("num_key_value_heads") or heads) * head_dim)


def block_linear_params(hf: dict) -> int:
    """Parameters of the linear layers of all decoder blocks (lm_head excluded)."""
    s = shape(hf)
    per_layer = s["hidden"] * (s["q"] + 2 * s["kv"]) + s["q"] * s["hidden"] + 3 * s["hidden"] * s["inter"]
    return s["layers"] * per_layer


def kv_bytes_per_token(hf: dict, dtype_bytes: int = 2) -> int:
    s = shape(hf)
    return 2 * s["layers"] * s["kv"] * dtype_bytes


def decode_step_bytes(hf: dict, batch: int, mean_context: float, dtype_bytes: int = 2) -> dict:
    """What one decode step of `batch` sequences reads, by part, in bytes."""
    s = shape(hf)
    parts = {
        "linear_weights": (block_linear_params(hf) + s["vocab"] * s["hidden"]) * dtype_bytes,
        "norm_weights": (2 * s["layers"] + 1) * s["hidden"] * dtype_bytes,
        "embedding_rows": batch * s["hidden"] * dtype_bytes,
        "kv_cache": round(batch * mean_context * kv_bytes_per_token(hf, dtype_bytes)),
    }
    parts["total"] = sum(parts.values())
    return parts


def int4_decode_step_bytes(hf: dict, batch: int, mean_context: float, group_size: int, dtype_bytes: int = 2) -> dict:
    """decode_step_bytes for an INT4 weight-only engine: the decoder blocks' linear weights as 4-bit
    codes plus a scale (model dtype) and a uint8 zero point per group of each output row; the lm_head,
    norms, embedding rows and KV cache as in the model dtype."""
    s = shape(hf)
    parts = decode_step_bytes(hf, batch, mean_context, dtype_bytes)
    block = block_linear_params(hf)
    parts["linear_weights"] = block // 2 + (block // group_size) * (dtype_bytes + 1) + s["vocab"] * s["hidden"] * dtype_bytes
    parts["total"] = sum(v for k, v in parts.items() if k != "total")
    return parts


def decode_mean_context(isl: int, osl: int) -> float:
    """Mean context a decode step attends over: the steps that make tokens 2..osl see isl+1 .. isl+osl-1."""
    return isl + osl / 2


def flops_per_output_token(hf: dict, isl: int, osl: int) -> float:
    """A request's whole FLOPs (prompt and decode) over its osl output tokens."""
    s = shape(hf)
    linear = 2 * block_linear_params(hf)
    lm_head = 2 * s["vocab"] * s["hidden"]
    attention = 4 * s["layers"] * s["q"]  # per token, per token of context
    prompt = isl * linear + attention * isl * (isl + 1) / 2 + lm_head
    decode = sum(linear + lm_head + attention * (isl + j) for j in range(1, osl))
    return (prompt + decode) / osl
