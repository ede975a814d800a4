"""Random packed batches over a paged KV cache, for testing attention kernels against the
torch reference. Imports neither triton nor ingot.kernels (tests/gpu uses it too)."""

from __future__ import annotations

import torch

from ingot.attention.metadata import AttentionMetadata
from ingot.attention.torch_ref import TorchAttentionBackend
from ingot.quantization.fp8_format import FP8_DTYPE, quantize


def make_batch(seqs: list[tuple[int, int]], num_heads: int, num_kv_heads: int, head_dim: int,
               tokens_per_block: int, dtype: torch.dtype, device: str = "cpu", seed: int = 0,
               spare_blocks: int = 3, num_blocks: int | None = None, kv_scale: torch.Tensor | None = None):
    """seqs: (cached_len, query_len) per sequence; num_blocks: the pool size (default: just enough).

    Returns q, k, v (new tokens), kv_cache holding the cached prefixes at shuffled block ids and
    NaN in every slot nothing wrote (as an uninitialised pool may), and the metadata. With kv_scale
    ((2,) float32 [k_scale, v_scale]) the cache is fp8, its prefixes quantized with those scales.
    """
    g = torch.Generator().manual_seed(seed)  # host: block ids
    gd = torch.Generator(device=device).manual_seed(seed)  # device: values
    blocks_per_seq = [-(-(c + n) // tokens_per_block) for c, n in seqs]
    num_blocks = num_blocks or sum(blocks_per_seq) + spare_blocks
    ids = torch.randperm(num_blocks, generator=g).tolist()
    tables, cached_slots, slots, starts, lens = [], [], [], [0], []
    for (cached, new), nb in zip(seqs, blocks_per_seq):
        blocks, ids = ids[:nb], ids[nb:]
        tables.append(blocks)
        slot = [blocks[p // tokens_per_block] * tokens_per_block + p % tokens_per_block for p in range(cached + new)]
        cached_slots += slot[:cached]
        slots += slot[cached:]
        starts.append(starts[-1] + new)
        lens.append(cached + new)
    cache = torch.full((2, num_blocks, tokens_per_block, num_kv_heads, head_dim), float("nan"), device=device)
    flat = cache.view(2, -1, num_kv_heads, head_dim)
    flat[:, cached_slots] = torch.randn(2, len(cached_slots), num_kv_heads, head_dim, generator=gd, device=device)
    width = max(blocks_per_seq)
    tables = [t + [0] * (width - len(t)) for t in tables]
    total = starts[-1]
    q = torch.randn(total, num_heads, head_dim, generator=gd, device=device)
    k = torch.randn(total, num_kv_heads, head_dim, generator=gd, device=device)
    v = torch.randn(total, num_kv_heads, head_dim, generator=gd, device=device)
    meta = AttentionMetadata(
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(lens, dtype=torch.int32, device=device),
        block_tables=torch.tensor(tables, dtype=torch.int32, device=device),
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        query_start_loc_cpu=starts, seq_lens_cpu=lens,
        max_query_len=max(n for _, n in seqs), max_seq_len=max(lens),
    )
    if kv_scale is not None:
        cache = torch.stack([quantize(cache[0], kv_scale[0].to(device)), quantize(cache[1], kv_scale[1].to(device))])
    return q.to(dtype), k.to(dtype), v.to(dtype), cache.to(FP8_DTYPE if kv_scale is not None else dtype), meta


def reference(q, k, v, kv_cache, meta, scale, sliding_window, kv_scale=None):
    """The torch backend in fp32 on copies: (output (T, H, D) fp32, cache after the write). An fp8
    cache stays fp8 (the reference rounds K and V through E4M3 with kv_scale as it writes them)."""
    cache = kv_cache.clone() if kv_cache.dtype == FP8_DTYPE else kv_cache.float().clone()
    out = TorchAttentionBackend().forward(q.float(), k.float(), v.float(), cache, meta, scale, sliding_window,
                                          kv_scale)
    return out, cache


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; inf if out has a NaN."""
    out, ref = out.double(), ref.double()
    if torch.isnan(out).any():
        return float("inf")
    return ((out - ref).norm() / ref.norm()).item()
