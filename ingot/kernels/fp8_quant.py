"""Activations to FP8 E4M3 on the way into an FP8 linear layer (ingot/quantization/fp8_method.py).

    dynamic  one scale per row (token): scale = max(|row|) / 448, stored (rows, 1) float32
    static   one scale for all rows, calibrated at build: read from a (1,) float32 tensor
    q = E4M3(clamp(x / scale, -448, 448))      the numerics of fp8_format.quantize

The quantization is fused into the kernel that makes the activation where TensorRT-LLM fuses it:
RMSNorm (ingot/kernels/rmsnorm.py, whole row in registers) and SiLU·mul (here: a row of up to
16k sits in registers; a wider one takes two passes, the second from L2, for its dynamic scale). The
attention output, which no kernel of ours produces row by row, is quantized by `quantize_fp8`.

Each fused kernel rounds the activation to the model dtype before quantizing, so that fused and
unfused (the bf16 activation, then fp8_format.quantize_per_row) give the same bytes.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ingot.kernels._checks import check_dtype, check_last_dim_contiguous, check_same_device, sig
from ingot.quantization.fp8_format import E4M3_MAX, FP8_DTYPE, MIN_SCALE

_WHOLE_ROW = 16384  # rows up to this width sit in registers: one pass; wider ones take two, in chunks
_CHUNK = 4096


@triton.jit
def row_scale(amax, static_scale_ptr, scale_ptr, row, DYNAMIC: tl.constexpr):
    """The row's scale: from its largest magnitude (stored for the GEMM's epilogue), or the static one."""
    if DYNAMIC:
        scale = tl.maximum(amax * (1.0 / 448.0), 1e-12)  # fp8_format.scale_for: E4M3_MAX, MIN_SCALE
        tl.store(scale_ptr + row, scale)
    else:
        scale = tl.load(static_scale_ptr).to(tl.float32)
    return scale


@triton.jit
def to_e4m3(y, scale):
    """fp32 values -> float8_e4m3fn, saturated at +-448, ties to even (fp8_format.round_to_e4m3).

    Rounded by arithmetic, then cast exactly: the E4M3 grid step of v's binade (2^(e-3), e >= -6)
    divides v, and adding then subtracting 1.5 * 2^23 rounds the quotient (|v / step| <= 16) to an
    integer, ties to even. Triton 3.6's interpreter rounds fp32 -> fp8 casts wrongly (it drops the
    carry into the exponent: 31.8 becomes 16), so a bare cast would pass on the GPU and fail in CI."""
    v = tl.clamp(tl.math.div_rn(y, scale), -448.0, 448.0)  # IEEE division, as torch's x / scale
    exponent = tl.maximum(((v.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127, -6)
    step = ((exponent + 124) << 23).to(tl.float32, bitcast=True)  # 2^(exponent - 3)
    inverse_step = ((130 - exponent) << 23).to(tl.float32, bitcast=True)  # exact: Triton's "/" is approximate
    rounded = ((v * inverse_step + 12582912.0) - 12582912.0) * step
    rounded = tl.where(rounded == 0.0, v * 0.0, rounded)  # keep the sign of a value that rounds to zero: -0.0
    return rounded.to(tl.float8e4nv)


@triton.jit
def _operand(x_ptr, row, cols, mask, stride_x, width, SILU_MUL: tl.constexpr):
    """fp32 values of x's row, or of SiLU(gate) * up over a [gate | up] row, rounded to x's dtype
    as ingot/kernels/activation.py rounds it."""
    at = x_ptr + row * stride_x + cols
    if SILU_MUL:
        gate = tl.load(at, mask=mask, other=0.0)
        up = tl.load(at + width, mask=mask, other=0.0)
        g = gate.to(tl.float32)
        silu = (g / (1.0 + tl.exp(-g))).to(gate.dtype)
        return (silu.to(tl.float32) * up.to(tl.float32)).to(gate.dtype).to(tl.float32)
    return tl.load(at, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _quantize_rows_kernel(x_ptr, q_ptr, scale_ptr, static_scale_ptr, stride_x, stride_q, width,
                          SILU_MUL: tl.constexpr, DYNAMIC: tl.constexpr, BLOCK: tl.constexpr, WHOLE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    if WHOLE:  # the row in registers: read once (a decode step's one row takes a few microseconds)
        cols = tl.arange(0, BLOCK)
        mask = cols < width
        y = _operand(x_ptr, row, cols, mask, stride_x, width, SILU_MUL)
        scale = row_scale(tl.max(tl.abs(y), axis=0), static_scale_ptr, scale_ptr, row, DYNAMIC)
        tl.store(q_ptr + row * stride_q + cols, to_e4m3(y, scale), mask=mask)
        return
    amax = 0.0
    if DYNAMIC:
        for c0 in range(0, width, BLOCK):
            cols = c0 + tl.arange(0, BLOCK)
            y = _operand(x_ptr, row, cols, cols < width, stride_x, width, SILU_MUL)
            amax = tl.maximum(amax, tl.max(tl.abs(y), axis=0))
    scale = row_scale(amax, static_scale_ptr, scale_ptr, row, DYNAMIC)
    for c0 in range(0, width, BLOCK):
        cols = c0 + tl.arange(0, BLOCK)
        mask = cols < width
        y = _operand(x_ptr, row, cols, mask, stride_x, width, SILU_MUL)
        tl.store(q_ptr + row * stride_q + cols, to_e4m3(y, scale), mask=mask)


def quantize_fp8(x: torch.Tensor, static_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x (rows, K) -> (E4M3 (rows, K), scale): per-row scales (rows, 1) float32 when static_scale is
    None, else static_scale itself ((1,) float32)."""
    return _launch(x, static_scale, silu_mul=False)


def silu_and_mul_fp8(x: torch.Tensor, static_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """SiLU(gate) * up over [gate | up] rows (rows, 2K), quantized as quantize_fp8 would quantize
    ingot/kernels/activation.silu_and_mul's output: (E4M3 (rows, K), scale)."""
    if x.shape[-1] % 2:
        raise ValueError(f"x: last dimension {x.shape[-1]} must be even ([gate | up])")
    return _launch(x, static_scale, silu_mul=True)


def _launch(x, static_scale, silu_mul: bool):
    _check(sig(x), None if static_scale is None else sig(static_scale))
    x2 = x.reshape(-1, x.shape[-1])
    rows, width = x2.shape[0], x2.shape[1] // (2 if silu_mul else 1)
    q = torch.empty((rows, width), dtype=FP8_DTYPE, device=x.device)
    scale = torch.empty((rows, 1), dtype=torch.float32, device=x.device) if static_scale is None else static_scale
    if rows > 0 and width > 0:
        whole = width <= _WHOLE_ROW
        block = triton.next_power_of_2(width) if whole else _CHUNK
        _quantize_rows_kernel[(rows,)](x2, q, scale, scale, x2.stride(0), q.stride(0), width, SILU_MUL=silu_mul,
                                       DYNAMIC=static_scale is None, BLOCK=block, WHOLE=whole,
                                       num_warps=max(1, min(16, block // 256)))
    return q, scale


@functools.lru_cache(maxsize=1024)
def _check(x, static_scale):
    check_dtype(x, "x")
    check_last_dim_contiguous(x, "x")
    if static_scale is None:
        check_same_device(x=x)
        return
    check_same_device(x=x, static_scale=static_scale)
    if static_scale.dtype != torch.float32 or static_scale.shape != (1,):
        raise ValueError(f"static_scale: want a (1,) float32 tensor, got {tuple(static_scale.shape)} {static_scale.dtype}")


assert E4M3_MAX == 448.0 and MIN_SCALE == 1e-12, "row_scale's literals must follow fp8_format"
