"""The floors ../shared/BENCHMARKS.md defines, computed from an engine's config (never typed in).

    bytes a decode step reads = every linear weight (q/k/v, o, gate/up, down in every layer, and
        the lm_head) in its stored precision with its scales and zero points + norm weights
        + the embedding rows of the step's tokens (not the table) + the KV bytes of every
        sequence's context
    decode floor (tok/s)      = batch x copy bandwidth / bytes a step reads
    FLOPs per token           = 2 x (parameters of every linear layer the token passes)
        + attention 4 x layers x (query heads x head_dim) x context; the lm_head only for tokens
        whose logits are computed (in a prompt: the last one)
    compute ceiling (tok/s)   = matmul rate / FLOPs per output token

A linear layer's stored bytes come from its quantization method itself: the method creates the
layer's parameters on the meta device (shapes and dtypes, no memory), so a new precision is
counted correctly the day it lands, scales and zero points included.
"""

from __future__ import annotations

from dataclasses import dataclass

from ingot.config import ModelConfig, QuantConfig


@dataclass(frozen=True)
class LinearShape:
    prefix: str  # the layer's name as the model gives it to its quantization scheme
    in_features: int
    out_features: int
    bias: bool


def linear_shapes(model: ModelConfig) -> list[LinearShape]:
    """Every linear layer of the model, fused as ingot stores them (qkv, gate_up), lm_head last."""
    shapes = []
    for i in range(model.num_layers):
        attn, mlp = f"layers.{i}.self_attn", f"layers.{i}.mlp"
        shapes += [
            LinearShape(f"{attn}.qkv_proj", model.hidden_size, model.q_size + 2 * model.kv_size, model.qkv_bias),
            LinearShape(f"{attn}.o_proj", model.q_size, model.hidden_size, model.o_bias),
            LinearShape(f"{mlp}.gate_up_proj", model.hidden_size, 2 * model.intermediate_size, model.mlp_bias),
            LinearShape(f"{mlp}.down_proj", model.intermediate_size, model.hidden_size, model.mlp_bias),
        ]
    return shapes + [LinearShape("lm_head", model.hidden_size, model.vocab_size, False)]


def stored_linear_bytes(shape: LinearShape, quant: QuantConfig, dtype: str) -> int:
    """Bytes of one linear layer as the engine stores it (weights, scales, zero points, bias)."""
    import torch
    from torch import nn

    from ingot.engine_format import torch_dtype
    from ingot.quantization import make_scheme

    layer = nn.Module()
    model_dtype = torch_dtype(dtype)
    with torch.device("meta"):
        make_scheme(quant).linear_method(shape.prefix).create_weights(layer, shape.in_features, shape.out_features,
                                                                      model_dtype)
    stored = sum(t.numel() * t.element_size() for t in (*layer.parameters(), *layer.buffers()))
    return stored + (shape.out_features * model_dtype.itemsize if shape.bias else 0)


def dtype_bytes(dtype: str) -> int:
    return {"fp32": 4, "fp16": 2, "bf16": 2}[dtype]


def kv_bytes_per_token(model: ModelConfig, dtype: str, kv_cache_dtype: str = "auto") -> int:
    """K and V of one token in every layer, stored in the model dtype or (kv_cache_dtype fp8) 1 byte each."""
    return 2 * model.num_layers * model.kv_size * (1 if kv_cache_dtype == "fp8" else dtype_bytes(dtype))


def decode_step_bytes(model: ModelConfig, dtype: str, batch: int, mean_context: float,
                      quant: QuantConfig | None = None) -> dict[str, int]:
    """What one decode step of `batch` sequences reads, by part, in bytes."""
    quant = quant or QuantConfig()
    width = dtype_bytes(dtype)
    parts = {
        "linear_weights": sum(stored_linear_bytes(s, quant, dtype) for s in linear_shapes(model)),
        "norm_weights": (2 * model.num_layers + 1) * model.hidden_size * width
        + (2 * model.num_layers * model.head_dim * width if model.qk_norm else 0),
        "embedding_rows": batch * model.hidden_size * width,
        "kv_cache": round(batch * mean_context * kv_bytes_per_token(model, dtype, quant.kv_cache_dtype)),
    }
    parts["total"] = sum(parts.values())
    return parts


def decode_mean_context(isl: int, osl: int) -> float:
    """Mean context a decode step attends over: the steps that make tokens 2..osl see isl+1 .. isl+osl-1."""
    return isl + osl / 2


def block_linear_params(model: ModelConfig) -> int:
    """Parameters of the linear layers of all decoder blocks (lm_head excluded)."""
    return sum(s.in_features * s.out_features for s in linear_shapes(model)[:-1])


def request_flop_parts(model: ModelConfig, isl: int, osl: int) -> dict[str, float]:
    """FLOPs of one request: its prompt (logits of the last prompt token only) and osl - 1 decode
    steps, split into the block linear layers' ("block_linear", what an FP8 engine runs in FP8)
    and the rest (lm_head and attention, in the model dtype)."""
    linear = 2 * block_linear_params(model)
    lm_head = 2 * model.vocab_size * model.hidden_size
    attention = 4 * model.num_layers * model.q_size  # per token, per token of context
    # decode step j (1..osl-1) feeds token isl + j, which attends over isl + j positions
    tokens = isl + osl - 1
    contexts = isl * (isl + 1) / 2 + (osl - 1) * isl + (osl - 1) * osl / 2
    return {"block_linear": tokens * linear, "other": osl * lm_head + attention * contexts}


def request_flops(model: ModelConfig, isl: int, osl: int) -> float:
    return sum(request_flop_parts(model, isl, osl).values())


def flops_per_output_token(model: ModelConfig, lengths: list[tuple[int, int]], part: str | None = None) -> float:
    """The workload's FLOPs over its output tokens (only those of `part` of request_flop_parts when
    given); `lengths` is (isl, osl) per request."""
    total = sum(request_flops(model, i, o) if part is None else request_flop_parts(model, i, o)[part]
                for i, o in lengths)
    return total / sum(o for _, o in lengths)
