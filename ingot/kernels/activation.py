"""SiLU(gate) * up over a fused [gate | up] row (ingot/layers/activation.py semantics).

Grid: (rows, column tiles of BLOCK). Each program reads BLOCK gate and BLOCK up values and
writes BLOCK outputs: one pass instead of torch's three (silu, mul, plus the chunk views).
silu is computed in fp32 and rounded to the input dtype before the multiply, as torch does.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ingot.kernels._checks import check_dtype, check_last_dim_contiguous, check_same_device, sig

_BLOCK = 1024


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, stride_x, stride_out, width, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < width
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    up = tl.load(x_ptr + row * stride_x + width + cols, mask=mask, other=0.0)
    g = gate.to(tl.float32)
    silu = (g / (1.0 + tl.exp(-g))).to(gate.dtype)
    out = silu.to(tl.float32) * up.to(tl.float32)
    tl.store(out_ptr + row * stride_out + cols, out.to(gate.dtype), mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x: (..., 2 * intermediate) laid out as [gate | up] -> silu(gate) * up, (..., intermediate)."""
    _check(sig(x))
    width = x.shape[-1] // 2
    x2 = x.reshape(-1, x.shape[-1])
    out = torch.empty((x2.shape[0], width), dtype=x.dtype, device=x.device)
    if x2.shape[0] > 0 and width > 0:
        grid = (x2.shape[0], triton.cdiv(width, _BLOCK))
        _silu_and_mul_kernel[grid](x2, out, x2.stride(0), out.stride(0), width, BLOCK=_BLOCK, num_warps=4)
    return out.view(*x.shape[:-1], width)


@functools.lru_cache(maxsize=1024)
def _check(x):
    check_dtype(x, "x")
    check_last_dim_contiguous(x, "x")
    check_same_device(x=x)
    if x.shape[-1] % 2:
        raise ValueError(f"x: last dimension {x.shape[-1]} must be even ([gate | up])")
