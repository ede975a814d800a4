"""Paged attention for decode: 1..8 new tokens per sequence, GQA-aware, split over the KV length.

Decode reads every cached key and value once per step and does little arithmetic with them, so
its floor is KV bytes / HBM bandwidth. The tiling serves that:

* GQA. A program owns one KV head and stacks all GROUP query heads of that head, for all the
  sequence's new tokens, as the rows of one tile: row r = token * GROUP + head_in_group,
  M = Q_BLOCK * GROUP rows padded to >= 16 for the tensor cores. Each K/V tile is loaded once for
  the whole group (not GROUP times), and the few new tokens (speculative verify) ride along:
  row r is query position ctx + r // GROUP and is masked causally against the keys.
* Flash decoding. Grid: (sequences, KV heads, NUM_SPLITS). With few sequences there are too few
  (sequence, KV head) programs to fill the GPU, so the context of each sequence is cut into
  NUM_SPLITS equal ranges (rounded to BLOCK_N) handled by separate programs; each writes its
  normalised partial output and log2-sum-exp per row, and _reduce_kernel merges them:
      out = sum_s 2^(lse_s - max) * out_s / sum_s 2^(lse_s - max).
  NUM_SPLITS is chosen on the host from (sequences, KV heads, block-table width) only, never
  from device data, so the grid is fixed for a fixed batch shape (CUDA graphs). With one split
  the kernel writes the output itself and no reduce runs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ingot.kernels._checks import interpreting, next_pow2, num_sms
from ingot.kernels.attention_common import (
    LOG2E, M_INIT, attend_masked_tile, check_attention_args, load_kv_scales, load_rows, store_rows,
)

MAX_QUERY_LEN = 8  # new tokens per sequence this kernel takes (decode, speculative verify)
MAX_ROWS = 128  # Q_BLOCK * GROUP rows per program, beyond which the prefill kernel is used
MAX_SPLITS = 64
MIN_TOKENS_PER_SPLIT = 128  # below this a split's fixed cost outweighs the parallelism (H200 sweep)


@triton.jit
def _decode_kernel(
    q_ptr, cache_ptr, out_ptr, part_out_ptr, part_lse_ptr, kv_scale_ptr,
    block_tables_ptr, query_start_ptr, seq_lens_ptr,
    stride_q_t, stride_q_h, stride_o_t, stride_o_h,
    stride_c_kv, stride_c_blk, stride_c_tok, stride_c_h, stride_bt,
    qk_scale, seq_begin, max_query_len, window,
    GROUP: tl.constexpr, Q_BLOCK: tl.constexpr, BLOCK_R: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, TOKENS_PER_BLOCK: tl.constexpr,
    BLOCK_N: tl.constexpr, NUM_SPLITS: tl.constexpr, HAS_WINDOW: tl.constexpr, KV_FP8: tl.constexpr,
):
    local = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq = seq_begin + local
    q_start = tl.load(query_start_ptr + seq)
    query_len = tl.load(query_start_ptr + seq + 1) - q_start
    if query_len > max_query_len:
        return  # the prefill kernel has this sequence
    seq_len = tl.load(seq_lens_ptr + seq)
    ctx = seq_len - query_len

    rows = tl.arange(0, BLOCK_R)
    tok = rows // GROUP
    row_valid = tok < query_len
    q_pos = ctx + tok
    d = tl.arange(0, BLOCK_D)
    q_off = (q_start + tok).to(tl.int64) * stride_q_t + (kv_head * GROUP + rows % GROUP) * stride_q_h
    q = load_rows(q_ptr, q_off, row_valid, d, HEAD_DIM, BLOCK_D, True)  # (BLOCK_R, BLOCK_D)

    # This split's key range: an equal share of [lo, seq_len), in whole BLOCK_N tiles.
    if HAS_WINDOW:
        lo = tl.maximum(ctx - window + 1, 0)
    else:
        lo = 0
    per_split = tl.cdiv(tl.cdiv(seq_len - lo, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = lo + split * per_split
    end = tl.minimum(start + per_split, seq_len)

    bt_row = block_tables_ptr + seq.to(tl.int64) * stride_bt
    k_cache_ptr, v_cache_ptr = cache_ptr, cache_ptr + stride_c_kv  # kv_cache[0], kv_cache[1]
    k_scale, v_scale = load_kv_scales(kv_scale_ptr, KV_FP8)
    head_off = kv_head * stride_c_h
    acc = tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32)
    m_i = tl.full((BLOCK_R,), M_INIT, dtype=tl.float32)
    l_i = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for n0 in range(start, end, BLOCK_N):
        acc, m_i, l_i = attend_masked_tile(
            acc, m_i, l_i, q, q_pos, n0 + tl.arange(0, BLOCK_N), end, bt_row, k_cache_ptr, v_cache_ptr,
            head_off, d, stride_c_blk, stride_c_tok, window, qk_scale, k_scale, v_scale, TOKENS_PER_BLOCK,
            HEAD_DIM, BLOCK_D, HAS_WINDOW, KV_FP8)

    seen = l_i > 0  # false for rows whose keys all lie in other splits
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    if NUM_SPLITS == 1:
        o_off = (q_start + tok).to(tl.int64) * stride_o_t + (kv_head * GROUP + rows % GROUP) * stride_o_h
        store_rows(out_ptr, o_off, row_valid, d, out, HEAD_DIM, BLOCK_D)
    else:
        # partials: (num_seqs, num_kv_heads, NUM_SPLITS, Q_BLOCK * GROUP, BLOCK_D) fp32
        part_row = ((local * tl.num_programs(1) + kv_head) * NUM_SPLITS + split).to(tl.int64) * (Q_BLOCK * GROUP) + rows
        keep = rows < Q_BLOCK * GROUP
        store_rows(part_out_ptr, part_row * BLOCK_D, keep, d, out, BLOCK_D, BLOCK_D)
        lse = tl.where(seen, m_i + tl.math.log2(tl.where(seen, l_i, 1.0)), float("-inf"))
        tl.store(part_lse_ptr + part_row, lse, mask=keep)


@triton.jit
def _reduce_kernel(
    out_ptr, part_out_ptr, part_lse_ptr, query_start_ptr,
    stride_o_t, stride_o_h, seq_begin, max_query_len, num_kv_heads,
    GROUP: tl.constexpr, Q_BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
):
    """One program per (sequence, new token, query head): merge the NUM_SPLITS partials."""
    local = tl.program_id(0) // Q_BLOCK
    tok = tl.program_id(0) % Q_BLOCK
    head = tl.program_id(1)
    seq = seq_begin + local
    q_start = tl.load(query_start_ptr + seq)
    query_len = tl.load(query_start_ptr + seq + 1) - q_start
    if (query_len > max_query_len) | (tok >= query_len):
        return
    kv_head = head // GROUP
    s = tl.arange(0, NUM_SPLITS)
    part_row = ((local * num_kv_heads + kv_head) * NUM_SPLITS + s).to(tl.int64) * (Q_BLOCK * GROUP)
    part_row += tok * GROUP + head % GROUP
    lse = tl.load(part_lse_ptr + part_row)  # (NUM_SPLITS,)
    weight = tl.math.exp2(lse - tl.max(lse, 0))  # 0 for splits that saw no key of this row
    d = tl.arange(0, BLOCK_D)
    parts = tl.load(part_out_ptr + part_row[:, None] * BLOCK_D + d[None, :])  # (NUM_SPLITS, BLOCK_D)
    out = tl.sum(parts * weight[:, None], 0) / tl.sum(weight, 0)
    o_off = (q_start + tok).to(tl.int64) * stride_o_t + head * stride_o_h
    tl.store(out_ptr + o_off + d, out.to(out_ptr.dtype.element_ty), mask=d < HEAD_DIM)


def num_splits_for(num_seqs: int, num_kv_heads: int, max_context: int, device: torch.device) -> int:
    """A power of two such that (sequences x KV heads x splits) fills about two waves of the SMs,
    each split keeping at least MIN_TOKENS_PER_SPLIT keys. Host ints only: static per batch shape."""
    want = triton.cdiv(2 * num_sms(device.index), max(1, num_seqs * num_kv_heads))
    by_len = max(1, max_context // MIN_TOKENS_PER_SPLIT)
    return min(next_pow2(min(want, by_len)), MAX_SPLITS)


def _config() -> dict:
    if interpreting():
        return dict(block_n=16, num_warps=4, num_stages=1)
    return dict(block_n=64, num_warps=4, num_stages=3)


def decode_attention(
    q: torch.Tensor,  # (T, H, D)
    kv_cache: torch.Tensor,  # (2, num_blocks, tokens_per_block, Hkv, D), new tokens already written
    out: torch.Tensor,  # (T, H, D)
    query_start_loc: torch.Tensor,  # (S + 1,) int32
    seq_lens: torch.Tensor,  # (S,) int32
    block_tables: torch.Tensor,  # (S, max_blocks) int32
    scale: float,
    sliding_window: int | None,
    max_query_len: int,  # host int, <= MAX_QUERY_LEN: sequences with more new tokens are skipped
    seq_begin: int = 0,
    num_seqs: int | None = None,
    num_splits: int | None = None,  # default: num_splits_for(..., block-table width in tokens)
    kv_scale: torch.Tensor | None = None,  # (2,) float32 [k_scale, v_scale]: an fp8 cache's, else None
    **tiles,  # block_n, num_warps, num_stages: override _config (tests, benchmarks)
) -> torch.Tensor:
    check_attention_args(q, kv_cache, out, query_start_loc, seq_lens, block_tables, kv_scale)
    num_seqs = seq_lens.shape[0] - seq_begin if num_seqs is None else num_seqs
    num_heads, head_dim, num_kv_heads = q.shape[1], q.shape[2], kv_cache.shape[3]
    group = num_heads // num_kv_heads
    q_block = next_pow2(max_query_len)
    if not 1 <= max_query_len <= MAX_QUERY_LEN or q_block * group > MAX_ROWS:
        raise ValueError(f"decode_attention: max_query_len={max_query_len} with {group} query heads per KV "
                         f"head is outside this kernel (<= {MAX_QUERY_LEN} tokens, <= {MAX_ROWS} rows)")
    if num_seqs <= 0:
        return out
    if num_splits is None:
        max_context = block_tables.shape[1] * kv_cache.shape[2]
        num_splits = num_splits_for(num_seqs, num_kv_heads, max_context, q.device)
    if num_splits & (num_splits - 1):
        raise ValueError(f"num_splits={num_splits} must be a power of two")
    cfg = {**_config(), **tiles}
    block_d = max(16, next_pow2(head_dim))
    rows = q_block * group
    part_out = part_lse = out  # placeholders, unused with one split
    if num_splits > 1:
        part_out = torch.empty((num_seqs, num_kv_heads, num_splits, rows, block_d), dtype=torch.float32, device=q.device)
        part_lse = torch.empty((num_seqs, num_kv_heads, num_splits, rows), dtype=torch.float32, device=q.device)
    _decode_kernel[(num_seqs, num_kv_heads, num_splits)](
        q, kv_cache, out, part_out, part_lse, kv_scale if kv_scale is not None else kv_cache,
        block_tables, query_start_loc, seq_lens,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        *kv_cache.stride()[:4], block_tables.stride(0),
        scale * LOG2E, seq_begin, max_query_len, sliding_window or 0,
        GROUP=group, Q_BLOCK=q_block, BLOCK_R=max(16, next_pow2(rows)), HEAD_DIM=head_dim, BLOCK_D=block_d,
        TOKENS_PER_BLOCK=kv_cache.shape[2], BLOCK_N=cfg["block_n"], NUM_SPLITS=num_splits,
        HAS_WINDOW=sliding_window is not None, KV_FP8=kv_scale is not None,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    if num_splits > 1:
        _reduce_kernel[(num_seqs * q_block, num_heads)](
            out, part_out, part_lse, query_start_loc, out.stride(0), out.stride(1),
            seq_begin, max_query_len, num_kv_heads,
            GROUP=group, Q_BLOCK=q_block, HEAD_DIM=head_dim, BLOCK_D=block_d, NUM_SPLITS=num_splits,
            num_warps=4,
        )
    return out
