"""FP8 activation quantization (alone, fused into RMSNorm and SiLU·mul) and the FP8 GEMM and GEMV
kernels against the torch reference of the same scheme (interpreter, CPU)."""

from __future__ import annotations

import pytest
import torch

from ingot.kernels.fp8_quant import quantize_fp8, silu_and_mul_fp8
from ingot.kernels.gemm import GemmConfig, gemm_fp8
from ingot.kernels.gemv import GemvConfig, gemv_fp8
from ingot.kernels.rmsnorm import fused_add_rmsnorm_fp8, rmsnorm_fp8
from ingot.layers.activation import silu_and_mul
from ingot.layers.norm import RMSNorm
from ingot.quantization.fp8_format import quantize, quantize_per_row, quantize_per_tensor, scale_for
from ingot.quantization.fp8_method import fp8_linear_emulated


def _reference(x: torch.Tensor, static: torch.Tensor | None):
    return quantize_per_row(x) if static is None else (quantize(x, static), static)


def _assert_same_quantized(got, want):
    """Equal scales, and E4M3 values equal but for rare ties rounded the other way (one grid step)."""
    (q, scale), (want_q, want_scale) = got, want
    torch.testing.assert_close(scale, want_scale, rtol=1e-6, atol=0)
    diff = (q.float() - want_q.float()).abs()
    step = want_q.float().abs().clamp(min=2 ** -6) / 8  # one E4M3 grid step at that magnitude
    assert bool((diff <= step).all()), f"max difference {diff.max().item()}"
    assert (diff > 0).float().mean().item() < 0.01


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("rows,width", [(1, 16), (5, 300), (3, 2500), (2, 17000)])
def test_quantize_fp8(rows, width, static):
    torch.manual_seed(rows * width)
    x = (torch.randn(rows, width) * 3).half()
    scale = scale_for(x.abs().amax().float() * 0.7).reshape(1) if static else None  # clips a few
    _assert_same_quantized(quantize_fp8(x, scale), _reference(x, scale))


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("rows,width", [(1, 8), (4, 1100), (2, 2100)])
def test_silu_and_mul_fp8(rows, width, static):
    torch.manual_seed(width)
    x = torch.randn(rows, 2 * width).half()
    want = silu_and_mul(x)
    scale = quantize_per_tensor(want)[1] if static else None
    _assert_same_quantized(silu_and_mul_fp8(x, scale), _reference(want, scale))


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("rows,hidden", [(1, 16), (6, 77)])
def test_rmsnorm_fp8(rows, hidden, static):
    torch.manual_seed(hidden)
    norm = RMSNorm(hidden, eps=1e-5).half()
    norm.weight.data = torch.randn(hidden).half()
    x, residual = torch.randn(rows, hidden).half(), torch.randn(rows, hidden).half()
    want, want_residual = norm(x, residual)
    scale = quantize_per_tensor(want)[1] if static else None
    q, got_scale, got_residual = fused_add_rmsnorm_fp8(x, residual, norm.weight, norm.eps, scale)
    torch.testing.assert_close(got_residual, want_residual, atol=0, rtol=0)
    _assert_same_quantized((q, got_scale), _reference(want, scale))
    _assert_same_quantized(rmsnorm_fp8(x, norm.weight, norm.eps, scale), _reference(norm(x), scale))


def _operands(m, n, k, per_row, seed):
    torch.manual_seed(seed)
    quant = quantize_per_row if per_row else quantize_per_tensor
    x_q, x_scale = quant(torch.randn(m, k))
    w_q, w_scale = quant(torch.randn(n, k) * k ** -0.5)
    return x_q, x_scale, w_q, w_scale, torch.randn(n).half()


@pytest.mark.parametrize("per_row", [True, False])
@pytest.mark.parametrize("m,n,k", [(1, 48, 64), (20, 40, 96), (33, 64, 128)])
def test_gemm_fp8(m, n, k, per_row):
    x_q, x_scale, w_q, w_scale, bias = _operands(m, n, k, per_row, seed=m + n)
    want = fp8_linear_emulated(x_q, x_scale, w_q, w_scale, bias, torch.float16)
    got = gemm_fp8(x_q, x_scale, w_q, w_scale, bias, torch.float16, GemmConfig(16, 32, 32))
    torch.testing.assert_close(got, want, atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("per_row", [True, False])
@pytest.mark.parametrize("m,n,k", [(1, 40, 96), (3, 33, 200)])
def test_gemv_fp8(m, n, k, per_row):
    x_q, x_scale, w_q, w_scale, bias = _operands(m, n, k, per_row, seed=n)
    want = fp8_linear_emulated(x_q, x_scale, w_q, w_scale, bias, torch.float16)
    got = gemv_fp8(x_q, x_scale, w_q, w_scale, bias, torch.float16, GemvConfig(16, 64))
    torch.testing.assert_close(got, want, atol=2e-3, rtol=2e-3)


def test_fp8_operands_checked():
    x_q, x_scale, w_q, w_scale, _ = _operands(2, 16, 32, True, seed=0)
    with pytest.raises(ValueError, match="w_scale"):
        gemm_fp8(x_q, x_scale, w_q, w_scale[:3], None, torch.float16)
    with pytest.raises(ValueError, match="x_q"):
        gemv_fp8(x_q.float(), x_scale, w_q, w_scale, None, torch.float16)
