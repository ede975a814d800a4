"""Rotary position embedding on q and k (rotate-half, as ingot/layers/rotary.py), in one launch.

One program per token: it reads the token's position, its cos/sin rows (head_dim/2 fp32 each)
once, and rotates every query and key head of that token, as (heads, head_dim/2) tiles of the
two halves:  out = [x1*cos - x2*sin | x2*cos + x1*sin], in fp32, rounded to the input dtype.
Inputs may be strided views of the fused qkv projection (last dim contiguous); with
inplace=True the rotated values overwrite them, so nothing new is allocated.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ingot.kernels._checks import (
    check_contiguous, check_dtype, check_last_dim_contiguous, check_same_device, check_shape, next_pow2, sig,
)


@triton.jit
def _rotate_heads(src, dst, stride_s_h, stride_d_h, num_heads, half, cos, sin,
                  BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
    """src/dst point at one token's first head; cos/sin: (BLOCK_HALF,) fp32."""
    heads = tl.arange(0, BLOCK_H)[:, None]
    cols = tl.arange(0, BLOCK_HALF)[None, :]
    mask = (heads < num_heads) & (cols < half)
    x1 = tl.load(src + heads * stride_s_h + cols, mask=mask, other=0.0)
    x2 = tl.load(src + heads * stride_s_h + half + cols, mask=mask, other=0.0)
    a, b = x1.to(tl.float32), x2.to(tl.float32)
    c, s = cos[None, :], sin[None, :]
    tl.store(dst + heads * stride_d_h + cols, (a * c - b * s).to(x1.dtype), mask=mask)
    tl.store(dst + heads * stride_d_h + half + cols, (b * c + a * s).to(x1.dtype), mask=mask)


@triton.jit
def _rotary_kernel(
    pos_ptr, cos_ptr, sin_ptr,
    q_ptr, k_ptr, q_out_ptr, k_out_ptr,
    stride_q_t, stride_q_h, stride_k_t, stride_k_h,
    stride_qo_t, stride_qo_h, stride_ko_t, stride_ko_h,
    num_heads, num_kv_heads, half,
    BLOCK_H: tl.constexpr, BLOCK_KH: tl.constexpr, BLOCK_HALF: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + t).to(tl.int64)
    cols = tl.arange(0, BLOCK_HALF)
    cos = tl.load(cos_ptr + pos * half + cols, mask=cols < half, other=0.0).to(tl.float32)
    sin = tl.load(sin_ptr + pos * half + cols, mask=cols < half, other=0.0).to(tl.float32)
    _rotate_heads(q_ptr + t * stride_q_t, q_out_ptr + t * stride_qo_t, stride_q_h, stride_qo_h,
                  num_heads, half, cos, sin, BLOCK_H, BLOCK_HALF)
    _rotate_heads(k_ptr + t * stride_k_t, k_out_ptr + t * stride_ko_t, stride_k_h, stride_ko_h,
                  num_kv_heads, half, cos, sin, BLOCK_KH, BLOCK_HALF)


def apply_rotary(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
                 sin: torch.Tensor, inplace: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """positions: (T,) int; q: (T, H, D); k: (T, Hkv, D); cos, sin: (max_positions, D/2) fp32.

    Returns the rotated (q, k): new contiguous tensors, or q and k themselves with inplace=True.
    Positions must lie in [0, max_positions) (not checked on the device: that would sync).
    """
    _check(sig(positions), sig(q), sig(k), sig(cos), sig(sin))
    q_out = q if inplace else torch.empty(q.shape, dtype=q.dtype, device=q.device)
    k_out = k if inplace else torch.empty(k.shape, dtype=k.dtype, device=k.device)
    num_tokens, num_heads, head_dim = q.shape
    half = head_dim // 2
    if num_tokens == 0:
        return q_out, k_out
    block_half = next_pow2(half)
    block_h = next_pow2(num_heads)
    _rotary_kernel[(num_tokens,)](
        positions, cos, sin, q, k, q_out, k_out,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        q_out.stride(0), q_out.stride(1), k_out.stride(0), k_out.stride(1),
        num_heads, k.shape[1], half,
        BLOCK_H=block_h, BLOCK_KH=next_pow2(k.shape[1]), BLOCK_HALF=block_half,
        num_warps=4 if block_h * block_half <= 2048 else 8,
    )
    return q_out, k_out


@functools.lru_cache(maxsize=1024)
def _check(positions, q, k, cos, sin):
    check_shape(q, "q", (None, None, None))
    num_tokens, _, head_dim = q.shape
    if head_dim % 2:
        raise ValueError(f"q: head_dim {head_dim} must be even for rotate-half rotary")
    check_shape(k, "k", (num_tokens, None, head_dim))
    check_shape(positions, "positions", (num_tokens,))
    check_dtype(positions, "positions", (torch.int32, torch.int64))
    check_contiguous(positions, "positions")
    check_shape(cos, "cos", (None, head_dim // 2))
    check_shape(sin, "sin", tuple(cos.shape))
    for name, t in (("cos", cos), ("sin", sin)):
        check_dtype(t, name, (torch.float32,))
        check_contiguous(t, name)
    check_dtype(q, "q")
    if k.dtype != q.dtype:
        raise ValueError(f"k: dtype {k.dtype} differs from q's {q.dtype}")
    check_last_dim_contiguous(q, "q")
    check_last_dim_contiguous(k, "k")
    check_same_device(positions=positions, q=q, k=k, cos=cos, sin=sin)
