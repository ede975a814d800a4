"""Paged attention for prompt chunks: packed variable-length, causal, over cached prefix + new tokens.

Sequence s owns query rows [query_start_loc[s], query_start_loc[s+1]); its context is
seq_lens[s] tokens, all already in the paged cache (the backend writes the new K/V first), the
new tokens being the last query_len of them. So a fresh prompt, a later chunk of a chunked
prefill and a prompt whose prefix blocks were reused are one and the same case.

Tiling (flash attention 2). Grid: (query tiles, query heads, sequences). A program owns BLOCK_M
query rows of one head of one sequence, keeps them in registers and streams the keys of its
context in BLOCK_N tiles through the block table, with the online softmax of attention_common.
Its keys split in two loops:
    [lo, diag)  visible to every row of the tile (no causal mask: the cheap loop)
    [diag, hi)  the tiles that cross the causal diagonal, masked
where hi = min(seq_len, the tile's last query position + 1), and lo is 0, or the first position
inside the sliding window of the tile's first row (the window's edge is then masked too).
Query tiles run last-first (program 0 takes the last, longest tile) to balance the causal
triangle; a program whose tile lies past its sequence's new tokens returns at once, so the grid
may be sized from the longest chunk in the batch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ingot.kernels._checks import interpreting, next_pow2
from ingot.kernels.attention_common import (
    LOG2E, M_INIT, attend_masked_tile, check_attention_args, kv_row_offsets, load_kv_rows, load_kv_scales, load_rows,
    softmax_step, store_rows,
)


@triton.jit
def _prefill_kernel(
    q_ptr, cache_ptr, out_ptr, kv_scale_ptr,
    block_tables_ptr, query_start_ptr, seq_lens_ptr,
    stride_q_t, stride_q_h, stride_o_t, stride_o_h,
    stride_c_kv, stride_c_blk, stride_c_tok, stride_c_h, stride_bt,
    qk_scale, seq_begin, min_query_len, window, num_m_tiles,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, TOKENS_PER_BLOCK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_WINDOW: tl.constexpr, KV_FP8: tl.constexpr,
):
    tile = num_m_tiles - 1 - tl.program_id(0)
    head = tl.program_id(1)
    seq = seq_begin + tl.program_id(2)
    q_start = tl.load(query_start_ptr + seq)
    query_len = tl.load(query_start_ptr + seq + 1) - q_start
    m0 = tile * BLOCK_M
    if (query_len < min_query_len) | (m0 >= query_len):
        return  # another kernel's sequence, or a tile past this chunk's end
    seq_len = tl.load(seq_lens_ptr + seq)
    first_q = seq_len - query_len + m0  # context position of the tile's first row

    rows = m0 + tl.arange(0, BLOCK_M)
    row_valid = rows < query_len
    q_pos = first_q - m0 + rows
    d = tl.arange(0, BLOCK_D)
    q_off = (q_start + rows).to(tl.int64) * stride_q_t + head * stride_q_h
    q = load_rows(q_ptr, q_off, row_valid, d, HEAD_DIM, BLOCK_D, True)  # (BLOCK_M, BLOCK_D)

    bt_row = block_tables_ptr + seq.to(tl.int64) * stride_bt
    k_cache_ptr, v_cache_ptr = cache_ptr, cache_ptr + stride_c_kv  # kv_cache[0], kv_cache[1]
    k_scale, v_scale = load_kv_scales(kv_scale_ptr, KV_FP8)
    head_off = (head // GROUP) * stride_c_h
    hi = tl.minimum(seq_len, first_q + BLOCK_M)
    if HAS_WINDOW:
        lo = tl.maximum(first_q - window + 1, 0)
    else:
        lo = 0
    diag = lo + (first_q - lo) // BLOCK_N * BLOCK_N

    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    m_i = tl.full((BLOCK_M,), M_INIT, dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for start in range(lo, diag, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        off = kv_row_offsets(bt_row, n, n < hi, stride_c_blk, stride_c_tok, TOKENS_PER_BLOCK, False) + head_off
        k = load_kv_rows(k_cache_ptr, off, n < hi, d, k_scale, q, HEAD_DIM, BLOCK_D, False, KV_FP8)
        v = load_kv_rows(v_cache_ptr, off, n < hi, d, v_scale, q, HEAD_DIM, BLOCK_D, False, KV_FP8)
        allowed = n[None, :] > q_pos[:, None] - window  # only the window's edge can mask here
        acc, m_i, l_i = softmax_step(acc, m_i, l_i, q, k, v, allowed, qk_scale, HAS_WINDOW)
    for start in range(diag, hi, BLOCK_N):
        acc, m_i, l_i = attend_masked_tile(
            acc, m_i, l_i, q, q_pos, start + tl.arange(0, BLOCK_N), hi, bt_row, k_cache_ptr, v_cache_ptr,
            head_off, d, stride_c_blk, stride_c_tok, window, qk_scale, k_scale, v_scale, TOKENS_PER_BLOCK,
            HEAD_DIM, BLOCK_D, HAS_WINDOW, KV_FP8)

    # every valid row saw at least its own key (l_i > 0); rows past the chunk may not, and are not stored
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    o_off = (q_start + rows).to(tl.int64) * stride_o_t + head * stride_o_h
    store_rows(out_ptr, o_off, row_valid, d, out, HEAD_DIM, BLOCK_D)


def _config(head_dim: int) -> dict:
    """Tile sizes: (BLOCK_M, BLOCK_N, warps, stages). Small in the interpreter (tests), sized for
    Hopper otherwise: a 128x128 bf16 Q tile plus double-buffered 64-row K and V tiles."""
    if interpreting():
        return dict(block_m=16, block_n=16, num_warps=4, num_stages=1)
    if head_dim > 128:
        return dict(block_m=64, block_n=32, num_warps=4, num_stages=2)
    return dict(block_m=128, block_n=64, num_warps=8, num_stages=2)


def prefill_attention(
    q: torch.Tensor,  # (T, H, D), last dim contiguous
    kv_cache: torch.Tensor,  # (2, num_blocks, tokens_per_block, Hkv, D), new tokens already written
    out: torch.Tensor,  # (T, H, D), written for the rows of the sequences this call handles
    query_start_loc: torch.Tensor,  # (S + 1,) int32
    seq_lens: torch.Tensor,  # (S,) int32, context length after this step
    block_tables: torch.Tensor,  # (S, max_blocks) int32
    scale: float,
    sliding_window: int | None,
    max_query_len: int,  # host int: the longest chunk among the sequences handled
    seq_begin: int = 0,
    num_seqs: int | None = None,  # handle sequences [seq_begin, seq_begin + num_seqs)
    min_query_len: int = 0,  # skip sequences with fewer new tokens (the decode kernel has them)
    kv_scale: torch.Tensor | None = None,  # (2,) float32 [k_scale, v_scale]: an fp8 cache's, else None
    **tiles,  # block_m, block_n, num_warps, num_stages: override _config (tests, benchmarks)
) -> torch.Tensor:
    check_attention_args(q, kv_cache, out, query_start_loc, seq_lens, block_tables, kv_scale)
    num_seqs = seq_lens.shape[0] - seq_begin if num_seqs is None else num_seqs
    head_dim, num_heads, num_kv_heads = q.shape[2], q.shape[1], kv_cache.shape[3]
    cfg = {**_config(head_dim), **tiles}
    num_m_tiles = triton.cdiv(max_query_len, cfg["block_m"])
    if num_seqs <= 0 or num_m_tiles == 0:
        return out
    grid = (num_m_tiles, num_heads, num_seqs)
    _prefill_kernel[grid](
        q, kv_cache, out, kv_scale if kv_scale is not None else kv_cache, block_tables, query_start_loc, seq_lens,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        *kv_cache.stride()[:4], block_tables.stride(0),
        scale * LOG2E, seq_begin, min_query_len, sliding_window or 0, num_m_tiles,
        GROUP=num_heads // num_kv_heads, HEAD_DIM=head_dim, BLOCK_D=max(16, next_pow2(head_dim)),
        TOKENS_PER_BLOCK=kv_cache.shape[2], BLOCK_M=cfg["block_m"], BLOCK_N=cfg["block_n"],
        HAS_WINDOW=sliding_window is not None, KV_FP8=kv_scale is not None,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return out
