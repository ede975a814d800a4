"""The one formula for KV-cache size, shared by the runtime's pool sizing and the planner."""

from __future__ import annotations


def kv_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype_bytes: float) -> int:
    """Bytes of K and V one token occupies across all layers (one rank, no sharding).

    Llama-3.1-8B in bf16: 2 (K and V) * 32 layers * 8 heads * 128 dims * 2 bytes = 131,072.
    """
    return int(2 * num_layers * num_kv_heads * head_dim * dtype_bytes)


def kv_bytes_per_block(num_layers: int, num_kv_heads: int, head_dim: int, dtype_bytes: float,
                       tokens_per_block: int) -> int:
    return kv_bytes_per_token(num_layers, num_kv_heads, head_dim, dtype_bytes) * tokens_per_block
