"""The reference backend in plain torch: runs on CPU and CUDA, one sequence at a time.

It is the definition the Triton kernels are tested against, so it favours clarity: gather a
sequence's context from its blocks, build the causal (and sliding-window) mask, call SDPA. An fp8
cache is quantized as it is written and dequantized as it is gathered (base.write_kv, read_kv).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ingot.attention.base import AttentionBackend, read_kv, write_kv
from ingot.attention.metadata import AttentionMetadata


class TorchAttentionBackend(AttentionBackend):
    name = "torch"

    def forward(self, q, k, v, kv_cache, metadata: AttentionMetadata, scale, sliding_window, kv_scale=None):
        write_kv(kv_cache, k, v, metadata.slot_mapping, kv_scale)
        k_scale, v_scale = (kv_scale[0], kv_scale[1]) if kv_scale is not None else (None, None)
        if metadata.is_pure_decode:
            return _decode(q, kv_cache, metadata, scale, sliding_window, k_scale, v_scale)
        out = torch.empty_like(q)
        starts = metadata.query_start_loc_cpu
        block_size = kv_cache.shape[2]
        for i, seq_len in enumerate(metadata.seq_lens_cpu):
            lo, hi = starts[i], starts[i + 1]
            num_blocks = -(-seq_len // block_size)
            blocks = metadata.block_tables[i, :num_blocks]
            keys = read_kv(kv_cache[0, blocks].flatten(0, 1)[:seq_len], k_scale, q.dtype)  # (seq_len, Hkv, D)
            values = read_kv(kv_cache[1, blocks].flatten(0, 1)[:seq_len], v_scale, q.dtype)
            out[lo:hi] = _attend(q[lo:hi], keys, values, scale, sliding_window)
        return out


def _attend(q, keys, values, scale, sliding_window):
    """q: (n, H, D) are the last n positions of a context of len(keys) tokens."""
    n, num_heads, _ = q.shape
    ctx = keys.shape[0]
    group = num_heads // keys.shape[1]
    q_pos = torch.arange(ctx - n, ctx, device=q.device).unsqueeze(1)  # (n, 1)
    k_pos = torch.arange(ctx, device=q.device).unsqueeze(0)  # (1, ctx)
    allowed = k_pos <= q_pos
    if sliding_window is not None:
        allowed &= k_pos > q_pos - sliding_window
    qh = q.transpose(0, 1)  # (H, n, D)
    kh = keys.to(q.dtype).transpose(0, 1).repeat_interleave(group, dim=0)  # (H, ctx, D)
    vh = values.to(q.dtype).transpose(0, 1).repeat_interleave(group, dim=0)
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=allowed, scale=scale)
    return out.transpose(0, 1)


def _decode(q, kv_cache, metadata: AttentionMetadata, scale, sliding_window, k_scale, v_scale):
    """One query per sequence: all sequences at once, contexts padded to the widest block table.

    q: (B, H, D), viewed as (B, Hkv, group, D) so GQA needs no repeated K/V. Slots past a
    sequence's length are masked in the scores and zeroed in V: the pool is uninitialised
    memory, and a NaN there would survive a zero attention weight.
    """
    num_seqs, num_heads, head_dim = q.shape
    tables = metadata.block_tables  # (B, W)
    keys = read_kv(kv_cache[0, tables].flatten(1, 2), k_scale, q.dtype)  # (B, L = W * block_size, Hkv, D), a copy
    values = read_kv(kv_cache[1, tables].flatten(1, 2), v_scale, q.dtype)
    num_kv_heads = keys.shape[2]
    positions = torch.arange(keys.shape[1], device=q.device).unsqueeze(0)  # (1, L)
    seq_lens = metadata.seq_lens.unsqueeze(1).long()  # (B, 1); the query sits at seq_len - 1
    valid = positions < seq_lens
    if sliding_window is not None:
        valid &= positions >= seq_lens - sliding_window
    values.masked_fill_(~valid[:, :, None, None], 0)
    qg = q.view(num_seqs, num_kv_heads, num_heads // num_kv_heads, head_dim)
    scores = torch.matmul(qg, keys.permute(0, 2, 3, 1).to(q.dtype)).float() * scale  # (B, Hkv, G, L)
    scores.masked_fill_(~valid[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(q.dtype)
    out = torch.matmul(probs, values.transpose(1, 2).to(q.dtype))  # (B, Hkv, G, D)
    return out.reshape(num_seqs, num_heads, head_dim)
