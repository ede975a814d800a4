"""The Triton attention backend (GPU): paged KV write, then decode and/or prompt-chunk kernels.

A step's sequences are split by their number of new tokens:
    query_len <= decode limit (8, fewer when GQA groups are wide) -> decode kernel (split-KV, GQA)
    query_len  > decode limit                                      -> prefill kernel (flash, varlen)
Each kernel is launched over the smallest contiguous range of sequence indices holding its
kind and skips, on the device, the sequences of the other kind; the scheduler puts running
(decoding) requests first, so the ranges rarely overlap. All sizes come from the metadata's
host copies: forward never reads a device tensor on the host, so it never syncs.

What must stay static for a captured CUDA graph of a step (decode, or verify of k drafts; the
base class's graph_metadata hook builds the capture's metadata this way):
  * num_seqs (rows of seq_lens / block_tables) and block_tables.shape[1] (the envelope's max
    blocks per sequence): together they fix the split count and the grids;
  * metadata.max_query_len (1 for decode, k+1 for a verify step): fixes the kernel variant;
  * the tensors' storage: the graph replays fixed pointers, so the runner copies each step's
    seq_lens, block_tables and slot_mapping into persistent buffers.
Device contents may change freely: seq_lens, block ids, slots, and even how many new tokens each
sequence has, as long as every query_len stays <= max_query_len. Padded sequences (graph_padding)
get seq_len = query_len, block 0 and slot -1 (the KV write skips negative slots). An fp8 cache's
scales are read by the kernels from the layer's kv_scale tensor, a fixed buffer: graphs replay them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from ingot.attention.base import AttentionBackend
from ingot.attention.metadata import AttentionMetadata
from ingot.kernels import decode_attention, prefill_attention, write_kv_cache
from ingot.kernels.decode_attention import MAX_QUERY_LEN, MAX_ROWS
from ingot.kernels._checks import next_pow2


@dataclass(frozen=True)
class _Range:
    begin: int  # first sequence index
    count: int  # sequences in [begin, begin + count), some possibly of the other kind
    max_query_len: int  # longest chunk among the sequences of this kind


@dataclass(frozen=True)
class LaunchPlan:
    decode: _Range | None
    prefill: _Range | None


def decode_limit(group: int) -> int:
    """Largest query_len the decode kernel takes with `group` query heads per KV head."""
    limit = MAX_QUERY_LEN
    while limit > 0 and next_pow2(limit) * group > MAX_ROWS:
        limit //= 2
    return limit


def plan_launches(query_start_loc_cpu: list[int], group: int) -> LaunchPlan:
    """Host-only: which sequences go to which kernel. Memoised: every layer of a step asks."""
    return _plan(tuple(query_start_loc_cpu), group)


@functools.lru_cache(maxsize=64)
def _plan(query_start_loc_cpu: tuple[int, ...], group: int) -> LaunchPlan:
    limit = decode_limit(group)
    lens = [b - a for a, b in zip(query_start_loc_cpu, query_start_loc_cpu[1:])]
    small = [i for i, n in enumerate(lens) if n <= limit]
    large = [i for i, n in enumerate(lens) if n > limit]
    return LaunchPlan(_range(small, lens), _range(large, lens))


def _range(indices: list[int], lens: list[int]) -> _Range | None:
    if not indices:
        return None
    return _Range(indices[0], indices[-1] - indices[0] + 1, max(lens[i] for i in indices))


class TritonAttentionBackend(AttentionBackend):
    name = "triton"
    supports_cuda_graphs = True  # launch sizes come from host metadata only; forward never syncs

    def forward(self, q, k, v, kv_cache, metadata: AttentionMetadata, scale, sliding_window, kv_scale=None):
        write_kv_cache(k, v, kv_cache, metadata.slot_mapping, kv_scale)
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        plan = plan_launches(metadata.query_start_loc_cpu, q.shape[1] // kv_cache.shape[3])
        tensors = (metadata.query_start_loc, metadata.seq_lens, metadata.block_tables)
        if plan.decode is not None:
            decode_attention(q, kv_cache, out, *tensors, scale, sliding_window,
                             max_query_len=plan.decode.max_query_len,
                             seq_begin=plan.decode.begin, num_seqs=plan.decode.count, kv_scale=kv_scale)
        if plan.prefill is not None:
            skip_below = plan.decode.max_query_len + 1 if plan.decode is not None else 0
            prefill_attention(q, kv_cache, out, *tensors, scale, sliding_window,
                              max_query_len=plan.prefill.max_query_len,
                              seq_begin=plan.prefill.begin, num_seqs=plan.prefill.count,
                              min_query_len=skip_below, kv_scale=kv_scale)
        return out
