"""Scatter the new tokens' keys and values into the paged KV cache.

Cache layout (ingot/attention/base.py): kv_cache (2, num_blocks, tokens_per_block, Hkv, D).
One program per new token copies its (Hkv, D) key and value tiles to slot
slot_mapping[t] = block * tokens_per_block + offset. A negative slot means "padding, write
nothing", so a CUDA-graph batch padded up to a captured size can point its dummy tokens at -1.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ingot.kernels._checks import (
    check_dtype, check_last_dim_contiguous, check_same_device, check_shape, next_pow2, sig,
)


@triton.jit
def _kv_write_kernel(
    k_ptr, v_ptr, cache_ptr, slot_ptr,
    stride_k_t, stride_k_h, stride_v_t, stride_v_h,
    stride_c_kv, stride_c_blk, stride_c_tok, stride_c_h,
    num_kv_heads, head_dim,
    TOKENS_PER_BLOCK: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    if slot >= 0:
        heads = tl.arange(0, BLOCK_H)[:, None]
        dims = tl.arange(0, BLOCK_D)[None, :]
        mask = (heads < num_kv_heads) & (dims < head_dim)
        dst = (slot // TOKENS_PER_BLOCK) * stride_c_blk + (slot % TOKENS_PER_BLOCK) * stride_c_tok
        dst += heads * stride_c_h + dims
        k = tl.load(k_ptr + t * stride_k_t + heads * stride_k_h + dims, mask=mask)
        v = tl.load(v_ptr + t * stride_v_t + heads * stride_v_h + dims, mask=mask)
        tl.store(cache_ptr + dst, k.to(cache_ptr.dtype.element_ty), mask=mask)  # keys: kv_cache[0]
        tl.store(cache_ptr + stride_c_kv + dst, v.to(cache_ptr.dtype.element_ty), mask=mask)  # values: [1]


def write_kv_cache(k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """k, v: (T, Hkv, D); kv_cache: (2, num_blocks, tokens_per_block, Hkv, D); slot_mapping: (T,) int."""
    _check(sig(k), sig(v), sig(kv_cache), sig(slot_mapping))
    num_tokens, num_kv_heads, head_dim = k.shape
    if num_tokens == 0:
        return
    block_h, block_d = next_pow2(num_kv_heads), next_pow2(head_dim)
    _kv_write_kernel[(num_tokens,)](
        k, v, kv_cache, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1), *kv_cache.stride()[:4],
        num_kv_heads, head_dim,
        TOKENS_PER_BLOCK=kv_cache.shape[2], BLOCK_H=block_h, BLOCK_D=block_d,
        num_warps=4 if block_h * block_d <= 2048 else 8,
    )


def check_kv_cache(kv_cache: torch.Tensor, num_kv_heads: int, head_dim: int) -> None:
    """The cache layout every kernel assumes: (2, blocks, tokens_per_block, Hkv, D), last dim dense,
    k and v halves with identical strides."""
    check_shape(kv_cache, "kv_cache", (2, None, None, num_kv_heads, head_dim))
    check_dtype(kv_cache, "kv_cache")
    check_last_dim_contiguous(kv_cache, "kv_cache")
    tokens_per_block = kv_cache.shape[2]
    if tokens_per_block & (tokens_per_block - 1):
        raise ValueError(f"kv_cache: tokens_per_block {tokens_per_block} must be a power of two")


@functools.lru_cache(maxsize=1024)
def _check(k, v, kv_cache, slot_mapping):
    check_shape(k, "k", (None, None, None))
    num_tokens, num_kv_heads, head_dim = k.shape
    check_shape(v, "v", tuple(k.shape))
    check_shape(slot_mapping, "slot_mapping", (num_tokens,))
    check_dtype(slot_mapping, "slot_mapping", (torch.int32, torch.int64))
    if slot_mapping.stride(0) != 1 and num_tokens > 1:
        raise ValueError("slot_mapping: must be contiguous")
    check_dtype(k, "k")
    check_dtype(v, "v")
    check_last_dim_contiguous(k, "k")
    check_last_dim_contiguous(v, "v")
    check_kv_cache(kv_cache, num_kv_heads, head_dim)
    check_same_device(k=k, v=v, kv_cache=kv_cache, slot_mapping=slot_mapping)
