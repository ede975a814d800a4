"""RMSNorm, optionally fused with the residual add before it (ingot/layers/norm.py semantics).

One program per row; the whole row (hidden <= 64k) sits in registers, so x and residual are
read once and the outputs written once: 2 reads + 2 writes per element fused, against the
5 passes of the unfused torch version (add, square-mean, scale, cast, weight).

Rounding follows the torch layer exactly: the new residual is x + residual rounded to the input
dtype; the normalised row is computed in fp32, rounded to the input dtype, then multiplied by
the weight (in fp32, rounded once more to the output dtype).

rmsnorm_fp8 / fused_add_rmsnorm_fp8 hand the row to an FP8 linear layer instead: the output,
rounded as above, is quantized to E4M3 in the same pass (ingot/kernels/fp8_quant.py), with a
per-row scale from the row's largest magnitude or a static one.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ingot.kernels._checks import (
    check_dtype, check_last_dim_contiguous, check_same_device, check_shape, next_pow2, sig,
)
from ingot.kernels.fp8_quant import row_scale, to_e4m3
from ingot.quantization.fp8_format import FP8_DTYPE

_MAX_HIDDEN = 65536


@triton.jit
def _rmsnorm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, scale_ptr, static_scale_ptr,
    stride_x, stride_res, stride_out, stride_res_out,
    hidden, eps,
    HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr, QUANT: tl.constexpr, DYNAMIC: tl.constexpr,
    OUT_DTYPE: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + row * stride_res + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)  # the new residual, rounded as torch does
        tl.store(res_out_ptr + row * stride_res_out + cols, x, mask=mask)
    x32 = x.to(tl.float32)
    mean_sq = tl.sum(x32 * x32, axis=0) / hidden
    normed = (x32 * tl.rsqrt(mean_sq + eps)).to(x.dtype)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    y = (w.to(tl.float32) * normed.to(tl.float32)).to(OUT_DTYPE)
    if QUANT:  # out is E4M3: quantize the rounded row
        amax = tl.max(tl.abs(y.to(tl.float32)), axis=0)
        scale = row_scale(amax, static_scale_ptr, scale_ptr, row, DYNAMIC)
        tl.store(out_ptr + row * stride_out + cols, to_e4m3(y.to(tl.float32), scale), mask=mask)
    else:
        tl.store(out_ptr + row * stride_out + cols, y, mask=mask)


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x: (..., hidden) -> weight * normalise(x), shape of x, dtype promote(x, weight)."""
    return _launch(x, None, weight, eps)[0]


def fused_add_rmsnorm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                      eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, residual): (..., hidden) -> (rmsnorm(x + residual), x + residual)."""
    return _launch(x, residual, weight, eps)


def rmsnorm_fp8(x: torch.Tensor, weight: torch.Tensor, eps: float,
                static_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x: (rows, hidden) -> (E4M3 (rows, hidden), scale) of rmsnorm(x, weight, eps): per-row scales
    (rows, 1) float32, or static_scale ((1,) float32) when given."""
    out, scale, _ = _launch(x, None, weight, eps, quant=True, static_scale=static_scale)
    return out, scale


def fused_add_rmsnorm_fp8(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                          static_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(E4M3 rows, scale, x + residual): fused_add_rmsnorm with its output quantized as rmsnorm_fp8's."""
    return _launch(x, residual, weight, eps, quant=True, static_scale=static_scale)


def _launch(x, residual, weight, eps, quant: bool = False, static_scale: torch.Tensor | None = None):
    hidden = x.shape[-1]
    _check(sig(x), None if residual is None else sig(residual), sig(weight))
    x2 = x.reshape(-1, hidden)
    out_dtype = torch.promote_types(x.dtype, weight.dtype)
    out = torch.empty(x2.shape, dtype=FP8_DTYPE if quant else out_dtype, device=x.device)
    res2 = residual.reshape(-1, hidden) if residual is not None else x2
    res_out = torch.empty_like(x2) if residual is not None else out
    dynamic = quant and static_scale is None
    scale = torch.empty((x2.shape[0], 1), dtype=torch.float32, device=x.device) if dynamic else static_scale
    block = next_pow2(hidden)
    num_warps = min(16, max(1, block // 512))
    if x2.shape[0] > 0:
        _rmsnorm_kernel[(x2.shape[0],)](
            x2, res2, weight, out, res_out, scale if quant else out, scale if quant else out,
            x2.stride(0), res2.stride(0), out.stride(0), res_out.stride(0),
            hidden, eps, HAS_RESIDUAL=residual is not None, BLOCK=block, QUANT=quant, DYNAMIC=dynamic,
            OUT_DTYPE=_TL_DTYPES[out_dtype], num_warps=num_warps,
        )
    residual_out = res_out.view(x.shape) if residual is not None else None
    if quant:
        return out, scale, residual_out
    return out.view(x.shape), residual_out


_TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}


@functools.lru_cache(maxsize=1024)
def _check(x, residual, weight):
    hidden = x.shape[-1]
    if not 0 < hidden <= _MAX_HIDDEN:
        raise ValueError(f"x: hidden size {hidden} is outside 1..{_MAX_HIDDEN}")
    check_dtype(x, "x")
    check_dtype(weight, "weight")
    check_shape(weight, "weight", (hidden,))
    check_last_dim_contiguous(x, "x")
    check_last_dim_contiguous(weight, "weight")
    if residual is None:
        check_same_device(x=x, weight=weight)
        return
    check_same_device(x=x, residual=residual, weight=weight)
    check_shape(residual, "residual", tuple(x.shape))
    if residual.dtype != x.dtype:
        raise ValueError(f"residual: dtype {residual.dtype} differs from x's {x.dtype}")
    check_last_dim_contiguous(residual, "residual")
