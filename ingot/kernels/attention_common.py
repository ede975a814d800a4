"""Pieces shared by the paged-attention kernels: finding a tile of keys through the block table,
loading it, and one step of the online softmax.

Paged addressing. Key position n of a sequence lives in block block_table[n // TPB] at offset
n % TPB, so a tile of BLOCK_N consecutive positions is a gather of BLOCK_N rows, each one
head_dim-long contiguous vector (256 B for bf16 at D=128). Rows are found per position rather
than per block so any tokens_per_block works with any BLOCK_N.

Online softmax (flash attention). Scores are kept in log2 units (qk_scale = scale * log2(e)) so
exp2 replaces exp. Per query row we carry m (running max), l (running sum of exp2(s - m)) and
acc (running sum of p @ V); a new tile rescales them by exp2(m_old - m_new). m starts at a
large finite negative number, not -inf, so a row whose tile is fully masked gives
exp2(-inf - m) = 0 rather than NaN.

The KV pool is not initialised: slots past a sequence's length may hold NaN. Every load of
such a position is masked to 0 (a 0 * NaN in p @ V would poison the row), so only written slots
are ever read.

FP8 cache (KV_FP8). Keys and values are stored as E4M3 with one scale each per layer; a tile is
dequantized as it is loaded, x = (float32(q) * scale) rounded to the query's dtype, exactly what the
torch reference reads (fp8_format.dequantize), and the softmax then runs as for a 16-bit cache.
The scales are loaded once per program from the layer's (2,) float32 kv_scale = [k_scale, v_scale].
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ingot.kernels._checks import (
    check_contiguous, check_dtype, check_last_dim_contiguous, check_same_device, check_shape, sig,
)
from ingot.kernels.kv_write import check_kv_cache, check_kv_scale, kv_scale_sig
from ingot.quantization.fp8_format import FP8_DTYPE

M_INIT = tl.constexpr(-1.0e30)  # the running max before any key: finite, see above
LOG2E = 1.4426950408889634  # host side: qk_scale = scale * LOG2E


@triton.jit
def kv_row_offsets(bt_row_ptr, n, n_valid, stride_c_blk, stride_c_tok,
                   TOKENS_PER_BLOCK: tl.constexpr, MASK_N: tl.constexpr):
    """(BLOCK_N,) int64 element offsets of key positions n inside one K (or V) cache half."""
    if MASK_N:
        blk = tl.load(bt_row_ptr + n // TOKENS_PER_BLOCK, mask=n_valid, other=0)
    else:
        blk = tl.load(bt_row_ptr + n // TOKENS_PER_BLOCK)
    return blk.to(tl.int64) * stride_c_blk + (n % TOKENS_PER_BLOCK).to(tl.int64) * stride_c_tok


@triton.jit
def load_rows(ptr, rows_off, row_valid, d,
              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, MASK_ROWS: tl.constexpr):
    """Load a (rows, BLOCK_D) tile; masked rows and padded columns read 0."""
    ptrs = ptr + rows_off[:, None] + d[None, :]
    if MASK_ROWS:
        if BLOCK_D == HEAD_DIM:
            x = tl.load(ptrs, mask=row_valid[:, None], other=0.0)
        else:
            x = tl.load(ptrs, mask=row_valid[:, None] & (d[None, :] < HEAD_DIM), other=0.0)
    else:
        if BLOCK_D == HEAD_DIM:
            x = tl.load(ptrs)
        else:
            x = tl.load(ptrs, mask=d[None, :] < HEAD_DIM, other=0.0)
    return x


@triton.jit
def load_kv_scales(kv_scale_ptr, KV_FP8: tl.constexpr):
    """(k_scale, v_scale) of an fp8 cache; unused otherwise."""
    if KV_FP8:
        return tl.load(kv_scale_ptr), tl.load(kv_scale_ptr + 1)
    else:
        return 1.0, 1.0


@triton.jit
def load_kv_rows(ptr, rows_off, row_valid, d, scale, like, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                 MASK_ROWS: tl.constexpr, KV_FP8: tl.constexpr):
    """A (rows, BLOCK_D) tile of keys or values in the dtype of `like` (the query tile): an fp8
    cache's E4M3 values times the layer's scale, rounded to that dtype."""
    x = load_rows(ptr, rows_off, row_valid, d, HEAD_DIM, BLOCK_D, MASK_ROWS)
    if KV_FP8:
        x = (x.to(tl.float32) * scale).to(like.dtype)
    return x


@triton.jit
def store_rows(ptr, rows_off, row_valid, d, x, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """Store a (rows, BLOCK_D) tile to the rows that are valid, cast to the pointer's dtype."""
    ptrs = ptr + rows_off[:, None] + d[None, :]
    x = x.to(ptr.dtype.element_ty)
    if BLOCK_D == HEAD_DIM:
        tl.store(ptrs, x, mask=row_valid[:, None])
    else:
        tl.store(ptrs, x, mask=row_valid[:, None] & (d[None, :] < HEAD_DIM))


@triton.jit
def softmax_step(acc, m_i, l_i, q, k, v, allowed, qk_scale, APPLY_MASK: tl.constexpr):
    """One flash-attention update with a (BLOCK_N, D) tile of keys k and values v.

    allowed: (M, BLOCK_N) bool, used only when APPLY_MASK (tiles that cross the causal diagonal,
    the end of the context or the sliding window's edge).
    """
    s = tl.dot(q, tl.trans(k)) * qk_scale  # (M, BLOCK_N) fp32, log2 units
    if APPLY_MASK:
        s = tl.where(allowed, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    p = tl.math.exp2(s - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return acc, m_new, l_i


@triton.jit
def attend_masked_tile(acc, m_i, l_i, q, q_pos, n, end, bt_row, k_cache_ptr, v_cache_ptr, head_off, d,
                       stride_c_blk, stride_c_tok, window, qk_scale, k_scale, v_scale,
                       TOKENS_PER_BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                       HAS_WINDOW: tl.constexpr, KV_FP8: tl.constexpr):
    """Attend to the key tile at context positions n (BLOCK_N,) that may cross the causal
    diagonal, the context's end, or the sliding window's edge: every mask applied."""
    n_valid = n < end
    off = kv_row_offsets(bt_row, n, n_valid, stride_c_blk, stride_c_tok, TOKENS_PER_BLOCK, True) + head_off
    k = load_kv_rows(k_cache_ptr, off, n_valid, d, k_scale, q, HEAD_DIM, BLOCK_D, True, KV_FP8)
    v = load_kv_rows(v_cache_ptr, off, n_valid, d, v_scale, q, HEAD_DIM, BLOCK_D, True, KV_FP8)
    allowed = (n[None, :] <= q_pos[:, None]) & n_valid[None, :]
    if HAS_WINDOW:
        allowed = allowed & (n[None, :] > q_pos[:, None] - window)
    return softmax_step(acc, m_i, l_i, q, k, v, allowed, qk_scale, True)


def check_attention_args(q, kv_cache, out, query_start_loc, seq_lens, block_tables, kv_scale=None) -> None:
    """Shapes, dtypes, strides and devices every paged-attention launcher relies on."""
    _check_attention(sig(q), sig(kv_cache), sig(out), sig(query_start_loc), sig(seq_lens), sig(block_tables),
                     kv_scale_sig(kv_scale))


@functools.lru_cache(maxsize=4096)
def _check_attention(q, kv_cache, out, query_start_loc, seq_lens, block_tables, kv_scale) -> None:
    check_shape(q, "q", (None, None, None))
    num_tokens, num_heads, head_dim = q.shape
    check_dtype(q, "q", (torch.float16, torch.bfloat16, torch.float32))
    check_last_dim_contiguous(q, "q")
    num_kv_heads = kv_cache.shape[3] if kv_cache.dim() == 5 else -1
    check_kv_cache(kv_cache, num_kv_heads, head_dim)
    if num_heads % num_kv_heads:
        raise ValueError(f"q: {num_heads} heads is not a multiple of the cache's {num_kv_heads} KV heads")
    if not 0 < head_dim <= 256:
        raise ValueError(f"q: head_dim {head_dim} is not supported (1..256)")
    if kv_cache.dtype not in (q.dtype, FP8_DTYPE):
        raise ValueError(f"kv_cache: dtype {kv_cache.dtype} differs from q's {q.dtype} (and is not fp8)")
    check_kv_scale(kv_cache, kv_scale)
    check_shape(out, "out", (num_tokens, num_heads, head_dim))
    if out.dtype != q.dtype:
        raise ValueError(f"out: dtype {out.dtype} differs from q's {q.dtype}")
    check_last_dim_contiguous(out, "out")
    check_shape(seq_lens, "seq_lens", (None,))
    num_seqs = seq_lens.shape[0]
    check_shape(query_start_loc, "query_start_loc", (num_seqs + 1,))
    check_shape(block_tables, "block_tables", (num_seqs, None))
    for name, t in (("query_start_loc", query_start_loc), ("seq_lens", seq_lens), ("block_tables", block_tables)):
        check_dtype(t, name, (torch.int32,))
    check_contiguous(query_start_loc, "query_start_loc")
    check_contiguous(seq_lens, "seq_lens")
    check_last_dim_contiguous(block_tables, "block_tables")
    check_same_device(q=q, kv_cache=kv_cache, out=out, query_start_loc=query_start_loc,
                      seq_lens=seq_lens, block_tables=block_tables)
