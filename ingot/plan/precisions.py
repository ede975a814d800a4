"""Precisions: bytes per weight, the tensor-core format the matmul needs, and the fallback.

A quantized checkpoint keeps embeddings, lm_head and norms in 16 bits (the usual recipe,
TensorRT-LLM's included); only the linear layers inside the blocks take the precision's bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from ingot.errors import ConfigError
from ingot.plan.gpus import GPU

# Scales stored beside the packed weights, as extra bytes per weight:
#   int4 AWQ/GPTQ: ingot's INT4 layout (ingot/quantization/int4_format.py) keeps, per output row
#     and group of 128 input columns (`ingot build`'s default --group-size), one scale in the
#     model dtype (2 bytes in bf16/fp16) and one uint8 zero point (1 byte) -> 3 / 128
#   NVFP4: one fp8 (E4M3) scale per 16 weights -> 1 / 16
#   MXFP4: one E8M0 scale per 32 weights -> 1 / 32
#   fp8: `ingot build --quant fp8` scales per output channel by default (--fp8-scaling per_channel):
#     one float32 per output row of each block linear layer, counted per row (Precision.row_scale_bytes),
#     not per weight. Under per_tensor it is two float32 per matrix, which nothing here counts.
#   int8 keeps per-tensor or per-channel scales: negligible.
_INT4_GROUP_OVERHEAD = (2 + 1) / 128


@dataclass(frozen=True)
class Precision:
    name: str
    weight_bytes: float  # per weight of a quantized linear layer, scales included
    compute: str  # tensor-core format of the matmul: bf16 | fp16 | fp8 | int8 | fp4
    quant: str | None  # `ingot build --quant` value; None for a plain dtype
    act_dtype: str  # activations, and the KV cache unless --kv-cache-dtype says otherwise
    about: str
    # `ingot build` fits the scales to what each layer is fed on a text (--calib-data): AWQ, GPTQ
    calibrates: bool = False
    # stored per output row of each quantized linear layer, beside weight_bytes per weight
    row_scale_bytes: float = 0.0


PRECISIONS: dict[str, Precision] = {p.name: p for p in (
    Precision("bf16", 2.0, "bf16", None, "bf16", "bfloat16 weights and activations"),
    Precision("fp16", 2.0, "fp16", None, "fp16", "float16 weights and activations"),
    Precision("fp8", 1.0, "fp8", "fp8", "bf16", "FP8 (E4M3) weights and activations, per-channel weight scales, "
              "per-token activation scales", row_scale_bytes=4.0),
    Precision("int4_awq", 0.5 + _INT4_GROUP_OVERHEAD, "bf16", "int4_awq", "bf16",
              "4-bit weights (AWQ, group 128), bf16 activations: weight-only", calibrates=True),
    Precision("int4_gptq", 0.5 + _INT4_GROUP_OVERHEAD, "bf16", "int4_gptq", "bf16",
              "4-bit weights (GPTQ, group 128), bf16 activations: weight-only", calibrates=True),
    Precision("w8a8_sq", 1.0, "int8", "w8a8_sq", "bf16", "SmoothQuant INT8 weights and activations"),
    Precision("nvfp4", 0.5 + 1 / 16, "fp4", "nvfp4", "bf16", "NVFP4 (E2M1, fp8 scale per 16) weights and activations"),
    Precision("mxfp4", 0.5 + 1 / 32, "fp4", "mxfp4", "bf16", "MXFP4 (E2M1, E8M0 scale per 32) weights and activations"),
)}

# KV-cache dtypes and their bytes per element; "auto" follows the precision's activations.
KV_DTYPES: dict[str, float] = {"auto": 0.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0}


def resolve_precision(spec: str) -> Precision:
    key = spec.strip().lower().replace("-", "_")
    if key not in PRECISIONS:
        raise ConfigError(f"unknown precision {spec!r}: choose one of {', '.join(PRECISIONS)}")
    return PRECISIONS[key]


def resolve_kv_dtype(spec: str | None, precision: Precision) -> str:
    key = (spec or "auto").strip().lower()
    if key not in KV_DTYPES:
        raise ConfigError(f"unknown --kv-cache-dtype {spec!r}: choose one of {', '.join(KV_DTYPES)}")
    return precision.act_dtype if key == "auto" else key


@dataclass(frozen=True)
class Execution:
    """How a precision actually runs on a GPU: natively, or through ingot's fallback."""

    compute: str  # the format the matmuls run in on this GPU
    kv_dtype: str  # the KV format actually stored
    native: bool
    notes: tuple[str, ...]  # one line per fallback, saying what ingot does instead


def execution_on(precision: Precision, kv_dtype: str, gpu: GPU) -> Execution:
    """FP8 needs Ada/Hopper (sm89+) tensor cores, FP4 needs Blackwell (sm100). Without them
    ingot keeps the small weights in memory and dequantizes inside the matmul (weight-only),
    so memory and decode bandwidth stay those of the precision while the matmul runs at the
    best format the card has."""
    notes: list[str] = []
    compute = precision.compute
    if not gpu.supports(compute):
        compute = "fp8" if compute == "fp4" and gpu.supports("fp8") else "bf16"
        notes.append(f"{gpu.name} ({gpu.arch}, sm{gpu.sm}) has no {precision.compute.upper()} tensor cores: "
                     f"ingot keeps {precision.name} weights ({precision.weight_bytes:g} B/weight) and "
                     f"dequantizes them to {compute} inside the matmul (weight-only W{_bits(precision)}A"
                     f"{_bits_of(compute)}); memory and decode as {precision.name}, prefill at the "
                     f"{compute} rate")
    kv = kv_dtype
    if kv == "fp8" and not gpu.supports("fp8"):
        kv = "int8"
        notes.append(f"{gpu.name} cannot compute in FP8: the KV cache is stored as int8 with per-head "
                     "scales instead (same 1 byte per element)")
    return Execution(compute=compute, kv_dtype=kv, native=not notes, notes=tuple(notes))


def _bits(precision: Precision) -> int:
    return 4 if precision.weight_bytes < 1 else int(8 * precision.weight_bytes)


def _bits_of(fmt: str) -> int:
    return {"fp4": 4, "int8": 8, "fp8": 8}.get(fmt, 16)
