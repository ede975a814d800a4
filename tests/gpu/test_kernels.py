"""Element-wise kernels and the KV write on CUDA, bf16 and fp16, against the torch layers."""

from __future__ import annotations

import pytest
import torch

from ingot.attention.base import write_kv
from ingot.kernels import apply_rotary, fused_add_rmsnorm, rmsnorm, silu_and_mul, write_kv_cache
from ingot.layers.activation import silu_and_mul as torch_silu_and_mul
from ingot.layers.norm import RMSNorm
from ingot.layers.rotary import RotaryEmbedding

DTYPES = [torch.bfloat16, torch.float16]
# One rounding of the output dtype apart at most (fp32 math on both sides, different order).
TOL = {torch.bfloat16: dict(atol=2e-2, rtol=1.6e-2), torch.float16: dict(atol=2e-3, rtol=2e-3)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,hidden", [(1, 4096), (7, 4097), (1000, 2048), (3, 8192)])
def test_rmsnorm_and_fused_add(rows, hidden, dtype):
    norm = RMSNorm(hidden, eps=1e-5).to("cuda", dtype)
    norm.weight.data = torch.randn(hidden, device="cuda").to(dtype)
    x, residual = (torch.randn(rows, hidden, device="cuda").to(dtype) for _ in range(2))
    torch.testing.assert_close(rmsnorm(x, norm.weight, norm.eps), norm(x), **TOL[dtype])
    want, want_residual = norm(x, residual)
    got, got_residual = fused_add_rmsnorm(x, residual, norm.weight, norm.eps)
    torch.testing.assert_close(got_residual, want_residual, atol=0, rtol=0)
    torch.testing.assert_close(got, want, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens,heads,kv_heads,head_dim", [(1, 32, 8, 128), (257, 32, 8, 128), (33, 12, 4, 64)])
@pytest.mark.parametrize("inplace", [False, True])
def test_rotary(tokens, heads, kv_heads, head_dim, dtype, inplace):
    rotary = RotaryEmbedding(head_dim, 8192, 500000.0,
                             {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    rotary.reset_cache("cuda")
    positions = torch.randint(0, 8192, (tokens,), device="cuda")
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim, device="cuda").to(dtype)
    q = qkv[:, : heads * head_dim].view(tokens, heads, head_dim)
    k = qkv[:, heads * head_dim: (heads + kv_heads) * head_dim].view(tokens, kv_heads, head_dim)
    want_q, want_k = rotary(positions, q, k)
    got_q, got_k = apply_rotary(positions, q, k, rotary.cos, rotary.sin, inplace=inplace)
    torch.testing.assert_close(got_q, want_q, **TOL[dtype])
    torch.testing.assert_close(got_k, want_k, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,width", [(1, 14336), (129, 1001), (2048, 4096)])
def test_silu_and_mul(rows, width, dtype):
    x = torch.randn(rows, 2 * width, device="cuda").to(dtype)
    torch.testing.assert_close(silu_and_mul(x), torch_silu_and_mul(x), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens,kv_heads,head_dim,tpb", [(1, 8, 128, 16), (1000, 8, 128, 64), (77, 2, 64, 16)])
def test_kv_write(tokens, kv_heads, head_dim, tpb, dtype):
    num_blocks = tokens // tpb + 9
    cache = torch.randn(2, num_blocks, tpb, kv_heads, head_dim, device="cuda").to(dtype)
    slots = torch.randperm(num_blocks * tpb, device="cuda")[:tokens]
    k, v = (torch.randn(tokens, kv_heads, head_dim, device="cuda").to(dtype) for _ in range(2))
    want = cache.clone()
    write_kv(want, k, v, slots)
    write_kv_cache(k, v, cache, slots)
    torch.testing.assert_close(cache, want, atol=0, rtol=0)
