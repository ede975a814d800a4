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
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from ingot.attention.metadata import AttentionMetadata


class AttentionBackend(ABC):
    name: str = "base"

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
    ) -> torch.Tensor:  # (num_tokens, num_heads, head_dim)
        ...


def write_kv(kv_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Scatter new keys and values into their slots (a flat view over blocks x offsets)."""
    num_kv_heads, head_dim = k.shape[1], k.shape[2]
    kv_cache[0].view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, k.to(kv_cache.dtype))
    kv_cache[1].view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, v.to(kv_cache.dtype))
