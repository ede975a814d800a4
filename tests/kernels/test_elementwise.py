"""RMSNorm (+ residual), rotary and SiLU-mul kernels against the torch layers (interpreter, CPU)."""

from __future__ import annotations

import pytest
import torch

from ingot.kernels import apply_rotary, fused_add_rmsnorm, rmsnorm, silu_and_mul
from ingot.layers.activation import silu_and_mul as torch_silu_and_mul
from ingot.layers.norm import RMSNorm
from ingot.layers.rotary import RotaryEmbedding

DTYPES = [torch.float32, torch.float16]
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float16: dict(atol=2e-3, rtol=2e-3)}


def _norm(hidden, dtype, seed):
    torch.manual_seed(seed)
    norm = RMSNorm(hidden, eps=1e-5).to(dtype)
    norm.weight.data = torch.randn(hidden).to(dtype)
    return norm


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,hidden", [(1, 8), (5, 33), (7, 300)])
def test_rmsnorm(rows, hidden, dtype):
    norm = _norm(hidden, dtype, seed=rows)
    x = torch.randn(rows, hidden).to(dtype)
    torch.testing.assert_close(rmsnorm(x, norm.weight, norm.eps), norm(x), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,hidden", [(1, 16), (6, 77)])
def test_fused_add_rmsnorm(rows, hidden, dtype):
    norm = _norm(hidden, dtype, seed=hidden)
    x, residual = torch.randn(rows, hidden).to(dtype), torch.randn(rows, hidden).to(dtype)
    want, want_residual = norm(x, residual)
    got, got_residual = fused_add_rmsnorm(x, residual, norm.weight, norm.eps)
    torch.testing.assert_close(got_residual, want_residual, atol=0, rtol=0)
    torch.testing.assert_close(got, want, **TOL[dtype])


def test_rmsnorm_3d_and_fp32_weight():
    """Qwen3's per-head q/k norm: (T, H, D) input; an fp32 weight promotes the output."""
    x = torch.randn(3, 4, 16).half()
    norm = _norm(16, torch.float32, seed=3)
    out = rmsnorm(x, norm.weight, norm.eps)
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out, norm(x), **TOL[torch.float16])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens,heads,kv_heads,head_dim", [(1, 4, 2, 8), (5, 3, 1, 24)])
@pytest.mark.parametrize("inplace", [False, True])
def test_rotary(tokens, heads, kv_heads, head_dim, dtype, inplace):
    rotary = RotaryEmbedding(head_dim, max_positions=64, theta=10000.0)
    positions = torch.randint(0, 64, (tokens,))
    # strided views into one fused qkv row, as the model makes them
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim).to(dtype)
    q = qkv[:, : heads * head_dim].view(tokens, heads, head_dim)
    k = qkv[:, heads * head_dim: (heads + kv_heads) * head_dim].view(tokens, kv_heads, head_dim)
    want_q, want_k = rotary(positions, q, k)
    got_q, got_k = apply_rotary(positions, q, k, rotary.cos, rotary.sin, inplace=inplace)
    torch.testing.assert_close(got_q, want_q, **TOL[dtype])
    torch.testing.assert_close(got_k, want_k, **TOL[dtype])
    if inplace:
        assert got_q.data_ptr() == q.data_ptr()
        torch.testing.assert_close(q, want_q, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,width", [(1, 7), (4, 1030)])
def test_silu_and_mul(rows, width, dtype):
    x = torch.randn(rows, 2 * width).to(dtype)
    torch.testing.assert_close(silu_and_mul(x), torch_silu_and_mul(x), **TOL[dtype])


def test_bad_arguments_raise_clear_errors():
    x = torch.randn(2, 8)
    with pytest.raises(ValueError, match="weight: shape"):
        rmsnorm(x, torch.ones(9), 1e-5)
    with pytest.raises(ValueError, match="dtype"):
        rmsnorm(x.to(torch.int32), torch.ones(8), 1e-5)
    with pytest.raises(ValueError, match="contiguous"):
        rmsnorm(torch.randn(8, 2).t(), torch.ones(8), 1e-5)
    with pytest.raises(ValueError, match="residual: shape"):
        fused_add_rmsnorm(x, torch.randn(3, 8), torch.ones(8), 1e-5)
    with pytest.raises(ValueError, match="even"):
        silu_and_mul(torch.randn(2, 7))
    q, k = torch.randn(2, 2, 8), torch.randn(2, 1, 8)
    with pytest.raises(ValueError, match="cos: shape"):
        apply_rotary(torch.zeros(2, dtype=torch.long), q, k, torch.ones(4, 3), torch.ones(4, 3))
    with pytest.raises(ValueError, match="positions: shape"):
        apply_rotary(torch.zeros(3, dtype=torch.long), q, k, torch.ones(4, 4), torch.ones(4, 4))
