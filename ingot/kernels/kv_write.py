"""Scatter the new tokens' keys and values into the paged KV cache.

Cache layout (ingot/attention/base.py): kv_cache (2, num_blocks, tokens_per_block, Hkv, D).
One program per new token copies its (Hkv, D) key and value tiles to slot
slot_mapping[t] = block * tokens_per_block + offset. A negative slot means "padding, write
nothing", so a CUDA-graph batch padded up to a captured size can point its dummy tokens at -1.

FP8 cache (float8_e4m3fn, --kv-cache-dtype fp8): the layer's scales kv_scale = [k_scale, v_scale]
map each value onto E4M3 as fp8_format.quantize does, q = E4M3(clamp(x / scale, -448, 448)), ties
to even; the attention kernels read q * scale back.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ingot.kernels._checks import (
    Sig, check_contiguous, check_dtype, check_last_dim_contiguous, check_same_device, check_shape, next_pow2, sig,
)
from ingot.kernels.fp8_quant import to_e4m3
from ingot.quantization.fp8_format import FP8_DTYPE


@triton.jit
def _kv_write_kernel(
    k_ptr, v_ptr, cache_ptr, slot_ptr, kv_scale_ptr,
    stride_k_t, stride_k_h, stride_v_t, stride_v_h,
    stride_c_kv, stride_c_blk, stride_c_tok, stride_c_h,
    num_kv_heads, head_dim,
    TOKENS_PER_BLOCK: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, KV_FP8: tl.constexpr,
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
        if KV_FP8:
            k = to_e4m3(k.to(tl.float32), tl.load(kv_scale_ptr))
            v = to_e4m3(v.to(tl.float32), tl.load(kv_scale_ptr + 1))
        tl.store(cache_ptr + dst, k.to(cache_ptr.dtype.element_ty), mask=mask)  # keys: kv_cache[0]
        tl.store(cache_ptr + stride_c_kv + dst, v.to(cache_ptr.dtype.element_ty), mask=mask)  # values: [1]


def write_kv_cache(k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor, slot_mapping: torch.Tensor,
                   kv_scale: torch.Tensor | None = None) -> None:
    """k, v: (T, Hkv, D); kv_cache: (2, num_blocks, tokens_per_block, Hkv, D); slot_mapping: (T,) int;
    kv_scale: (2,) float32 [k_scale, v_scale], for an fp8 cache only."""
    _check(sig(k), sig(v), sig(kv_cache), sig(slot_mapping), kv_scale_sig(kv_scale))
    num_tokens, num_kv_heads, head_dim = k.shape
    if num_tokens == 0:
        return
    block_h, block_d = next_pow2(num_kv_heads), next_pow2(head_dim)
    _kv_write_kernel[(num_tokens,)](
        k, v, kv_cache, slot_mapping, kv_scale if kv_scale is not None else kv_cache,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1), *kv_cache.stride()[:4],
        num_kv_heads, head_dim,
        TOKENS_PER_BLOCK=kv_cache.shape[2], BLOCK_H=block_h, BLOCK_D=block_d, KV_FP8=kv_scale is not None,
        num_warps=4 if block_h * block_d <= 2048 else 8,
    )


KV_CACHE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, FP8_DTYPE)


def check_kv_cache(kv_cache: torch.Tensor, num_kv_heads: int, head_dim: int) -> None:
    """The cache layout every kernel assumes: (2, blocks, tokens_per_block, Hkv, D), last dim dense,
    k and v halves with identical strides."""
    check_shape(kv_cache, "kv_cache", (2, None, None, num_kv_heads, head_dim))
    check_dtype(kv_cache, "kv_cache", KV_CACHE_DTYPES)
    check_last_dim_contiguous(kv_cache, "kv_cache")
    tokens_per_block = kv_cache.shape[2]
    if tokens_per_block & (tokens_per_block - 1):
        raise ValueError(f"kv_cache: tokens_per_block {tokens_per_block} must be a power of two")


def kv_scale_sig(kv_scale: torch.Tensor | None) -> Sig | None:
    return None if kv_scale is None else sig(kv_scale)


def check_kv_scale(kv_cache, kv_scale) -> None:
    """An fp8 cache comes with its layer's (2,) float32 [k_scale, v_scale] on its device; any other
    cache with none (Sigs or tensors)."""
    fp8 = kv_cache.dtype == FP8_DTYPE
    if fp8 and kv_scale is None:
        raise ValueError("kv_scale: an fp8 KV cache needs the layer's (2,) float32 [k_scale, v_scale]; got None")
    if kv_scale is None:
        return
    if not fp8:
        raise ValueError(f"kv_scale: given for a {str(kv_cache.dtype).removeprefix('torch.')} KV cache; "
                         "only an fp8 (float8_e4m3fn) cache is scaled: pass kv_scale=None")
    check_shape(kv_scale, "kv_scale", (2,))
    check_dtype(kv_scale, "kv_scale", (torch.float32,))
    check_contiguous(kv_scale, "kv_scale")
    check_same_device(kv_cache=kv_cache, kv_scale=kv_scale)


@functools.lru_cache(maxsize=1024)
def _check(k, v, kv_cache, slot_mapping, kv_scale):
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
    check_kv_scale(kv_cache, kv_scale)
    check_same_device(k=k, v=v, kv_cache=kv_cache, slot_mapping=slot_mapping)
