"""The attention-backend contract.

A backend receives, for one layer, the new tokens' q, k, v (already rotated) and that layer's
slice of the paged KV cache. It must
  1. write k and v of every new token into the cache at `metadata.slot_mapping`, and
  2. return, for every new token, softmax(q k^T * scale) v over its sequence's context:
     all cached tokens plus the new tokens up to and including itself (causal), limited to
     the last `sliding_window` positions when that is set.
Grouped-query attention: query head h reads KV head h // (num_heads // num_kv_heads).

Cache layout, shared by every backend so engines and pools do not depend on the backend:
    kv_cache: (2, num_blocks, tokens_per_block, num_kv_heads, head_dim); [0] keys, [1] values.

FP8 cache (--kv-cache-dtype fp8): kv_cache is float8_e4m3fn and the layer passes its scales,
kv_scale = [k_scale, v_scale] ((2,) float32, on the cache's device). Every backend stores
E4M3(clamp(k / k_scale, -448, 448)) (fp8_format.quantize) and reads back q * k_scale rounded to the
query's dtype (fp8_format.dequantize); likewise V with v_scale. Any other cache gets kv_scale=None.

CUDA graphs (ingot/runtime/cuda_graphs.py) capture steps in which every sequence computes the
same number of tokens q (decode: 1; verifying k drafts: 1 + k). A backend that can be captured
sets supports_cuda_graphs and answers two hooks:
  graph_metadata  at capture: metadata over the graph's static buffers, its host fields fixed for
                  every replay (so its launch grids fit any step of that shape);
  graph_padding   at replay: what the rows that pad a step up to the captured size hold.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from ingot.attention.metadata import AttentionMetadata
from ingot.quantization.fp8_format import FP8_DTYPE, dequantize, quantize


@dataclass
class GraphBuffers:
    """Static device buffers a captured step reads; refilled before each replay."""

    seq_lens: torch.Tensor  # (max_seqs,) int32
    block_tables: torch.Tensor  # (max_seqs, max_blocks_per_seq) int32
    slot_mapping: torch.Tensor  # (max_seqs * max_tokens_per_seq,) int64
    query_starts: dict[int, torch.Tensor]  # q -> (max_seqs + 1,) int32 = 0, q, 2q, ...: constant per q


@dataclass(frozen=True)
class PaddingRow:
    """A sequence that only pads a captured step: it must compute nothing that matters and write nothing."""

    seq_len: int
    slot: int  # the cache slot its new tokens write to; -1: none
    block: int  # what its block table holds


class AttentionBackend(ABC):
    name: str = "base"
    supports_cuda_graphs: bool = False

    @abstractmethod
    def forward(
        self,
        q: torch.Tensor,  # (num_tokens, num_heads, head_dim)
        k: torch.Tensor,  # (num_tokens, num_kv_heads, head_dim)
        v: torch.Tensor,  # (num_tokens, num_kv_heads, head_dim)
        kv_cache: torch.Tensor,  # (2, num_blocks, tokens_per_block, num_kv_heads, head_dim)
        metadata: AttentionMetadata,
        scale: float,
        sliding_window: int | None,
        kv_scale: torch.Tensor | None = None,  # (2,) float32 [k_scale, v_scale] of an fp8 cache, else None
    ) -> torch.Tensor:  # (num_tokens, num_heads, head_dim)
        ...

    def graph_metadata(self, buffers: GraphBuffers, num_seqs: int, tokens_per_seq: int,
                       max_seq_len: int) -> AttentionMetadata:
        """Capture hook: a step of num_seqs sequences of tokens_per_seq new tokens each. The host
        fields claim the longest context (max_seq_len) for every sequence, so sizes chosen from
        them (splits, grids) cover whatever lengths a replay brings; forward must read the
        actual lengths from the device tensors only."""
        starts = buffers.query_starts[tokens_per_seq][: num_seqs + 1]
        return AttentionMetadata(
            query_start_loc=starts, seq_lens=buffers.seq_lens[:num_seqs], block_tables=buffers.block_tables[:num_seqs],
            slot_mapping=buffers.slot_mapping[: num_seqs * tokens_per_seq],
            query_start_loc_cpu=list(range(0, (num_seqs + 1) * tokens_per_seq, tokens_per_seq)),
            seq_lens_cpu=[max_seq_len] * num_seqs, max_query_len=tokens_per_seq, max_seq_len=max_seq_len)

    def graph_padding(self, tokens_per_seq: int) -> PaddingRow:
        """Replay hook: a padding sequence has a context of just its own tokens in the reserved
        null block 0, and writes no KV (slot -1)."""
        return PaddingRow(seq_len=tokens_per_seq, slot=-1, block=0)


def write_kv(kv_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor,
             kv_scale: torch.Tensor | None = None) -> None:
    """Scatter new keys and values into their slots (a flat view over blocks x offsets); an fp8
    cache stores them quantized with kv_scale = [k_scale, v_scale]."""
    num_kv_heads, head_dim = k.shape[1], k.shape[2]
    if kv_cache.dtype == FP8_DTYPE:  # copied as bytes: torch's index_copy_ has no float8 kernel on CPU
        check_fp8_scale(kv_scale)
        kv_cache = kv_cache.view(torch.uint8)
        k, v = quantize(k, kv_scale[0]).view(torch.uint8), quantize(v, kv_scale[1]).view(torch.uint8)
    else:
        k, v = k.to(kv_cache.dtype), v.to(kv_cache.dtype)
    kv_cache[0].view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, k)
    kv_cache[1].view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, v)


def read_kv(cached: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """Keys or values gathered from the cache, in `dtype`: an fp8 cache's dequantized with `scale`."""
    if cached.dtype == FP8_DTYPE:
        return dequantize(cached, scale, dtype)
    return cached.to(dtype)


def check_fp8_scale(kv_scale: torch.Tensor | None) -> None:
    if kv_scale is None or kv_scale.shape != (2,):
        raise ValueError("kv_scale: an fp8 KV cache needs the layer's (2,) float32 [k_scale, v_scale]; got "
                         f"{None if kv_scale is None else tuple(kv_scale.shape)}")
