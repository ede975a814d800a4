"""FP8 E4M3 arithmetic: the number format, scaling into it and back.

E4M3 ("fn": finite, no infinities) has 1 sign, 4 exponent (bias 7) and 3 mantissa bits:

    normal     |x| = 2^(e-7) * (1 + m/8),  e in 1..15 (e = 15 with m = 7 is NaN), max 448
    subnormal  |x| = 2^-6 * m/8,           m in 1..7, smallest 2^-9
    so between 2^k and 2^(k+1) (k >= -6) the grid step is 2^(k-3); below 2^-6 it is 2^-9.

Quantizing x with a scale s stores q = E4M3(clamp(x / s, -448, 448)) and stands for q * s. The
clamp is the saturation every FP8 recipe uses; torch's CPU cast saturates alike, but not every
cast does (some kernels and earlier torch releases give NaN past 448), so values reach the cast
clamped. NaN stays NaN.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

E4M3_MAX = 448.0
E4M3_MIN_NORMAL_EXP = -6  # 2^-6 is the smallest normal
E4M3_MANTISSA_BITS = 3
FP8_DTYPE = torch.float8_e4m3fn
MIN_SCALE = 1e-12  # an all-zero row or tensor still gets a finite scale (and quantizes to zeros)


def round_to_e4m3(x: torch.Tensor) -> torch.Tensor:
    """The nearest E4M3 value (ties to even), saturated to +-448, as float32; NaN stays NaN.

    Written as arithmetic on float32 (the grid step of x's binade, then round-half-to-even), so it
    states the format rather than trusting a cast; tests check it equals torch's float8_e4m3fn cast."""
    x = x.float().clamp(-E4M3_MAX, E4M3_MAX)
    _, exponent = torch.frexp(x)  # |x| = m * 2^exponent, m in [0.5, 1): the binade is 2^(exponent-1)
    binade = torch.clamp(exponent - 1, min=E4M3_MIN_NORMAL_EXP)
    step = torch.ldexp(torch.ones_like(x), binade - E4M3_MANTISSA_BITS)
    return (torch.round(x / step) * step).clamp(-E4M3_MAX, E4M3_MAX)  # rounding up past 448 saturates


def to_fp8(x: torch.Tensor) -> torch.Tensor:
    """x (already divided by its scale) as float8_e4m3fn, saturated to +-448."""
    return x.float().clamp(-E4M3_MAX, E4M3_MAX).to(FP8_DTYPE)


def scale_for(amax: torch.Tensor) -> torch.Tensor:
    """The scale that maps a largest magnitude `amax` onto 448, float32. A multiplication by the
    float32 1/448, not a division: torch divides by a Python number as a multiplication by its
    reciprocal on CUDA and exactly on the CPU, and the kernels (ingot/kernels/fp8_quant.py) must
    give the same scale as both."""
    return (amax.float() * (1.0 / E4M3_MAX)).clamp(min=MIN_SCALE)


def quantize(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x / scale in E4M3 (scale broadcasts: a scalar, a column per row, a row per column)."""
    return to_fp8(x.float() / scale)


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (q.float() * scale).to(dtype)


def quantize_per_tensor(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(E4M3 values, scale (1,) float32) with one scale for the whole tensor."""
    scale = scale_for(x.detach().abs().amax()).reshape(1)
    return quantize(x, scale), scale


def quantize_per_row(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(E4M3 values, scales (rows, 1) float32) with one scale per row: per output channel of a
    weight (out, in), or per token of an activation (tokens, hidden)."""
    scale = scale_for(x.detach().abs().amax(dim=-1, keepdim=True))
    return quantize(x, scale), scale


class Fp8Activation(NamedTuple):
    """An activation already quantized for an FP8 linear layer by the kernel that produced it
    (RMSNorm or SiLU·mul with the quantization fused, ingot/kernels/fp8_quant.py)."""
    values: torch.Tensor  # (tokens, in_features) float8_e4m3fn, same device as the layer
    scale: torch.Tensor  # (tokens, 1) float32 per token (dynamic), or (1,) float32 (static)
