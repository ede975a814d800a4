"""How many KV blocks the pool gets: from free device memory (CUDA) or a byte cap (CPU)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ingot.engine_format import EngineSpec
from ingot.config import DTYPE_BYTES, CacheConfig
from ingot.errors import ConfigError
from ingot.kv_size import kv_bytes_per_block
from ingot.runtime.kv_cache import blocks_needed

DEFAULT_CPU_CACHE_BYTES = 1 << 30


@dataclass(frozen=True)
class PoolPlan:
    num_blocks: int  # including the reserved null block
    tokens_per_block: int
    bytes_per_block: int
    max_seq_len: int
    kv_dtype: str = "fp32"  # what the pool stores: the engine's dtype, or "fp8" (E4M3, --kv-cache-dtype fp8)

    @property
    def bytes_per_token(self) -> int:
        """K and V of one token in every layer of this rank."""
        return self.bytes_per_block // self.tokens_per_block

    @property
    def num_tokens(self) -> int:
        return (self.num_blocks - 1) * self.tokens_per_block

    @property
    def max_concurrency(self) -> float:
        """How many sequences of the full max_seq_len fit at once."""
        return (self.num_blocks - 1) / blocks_needed(self.max_seq_len, self.tokens_per_block)

    def with_blocks(self, num_blocks: int) -> "PoolPlan":
        return PoolPlan(num_blocks, self.tokens_per_block, self.bytes_per_block, self.max_seq_len, self.kv_dtype)

    def describe(self) -> str:
        gib = self.num_blocks * self.bytes_per_block / 2**30
        dtype = "fp8 (E4M3, per-layer scales)" if self.kv_dtype == "fp8" else self.kv_dtype
        return (f"KV cache: {self.num_blocks - 1} blocks x {self.tokens_per_block} tokens = {self.num_tokens} "
                f"tokens ({gib:.2f} GiB) in {dtype}, {self.bytes_per_token:,} bytes per token; max concurrency "
                f"at max_seq_len={self.max_seq_len}: {self.max_concurrency:.1f} sequences")


def plan_pool(spec: EngineSpec, cache: CacheConfig, device: torch.device, num_layers: int | None = None,
              num_kv_heads: int | None = None) -> PoolPlan:
    """The pool of one rank: its layers and KV heads (default: the whole model's)."""
    cfg, build = spec.model, spec.build
    per_block = kv_bytes_per_block(num_layers or cfg.num_layers, num_kv_heads or cfg.num_kv_heads, cfg.head_dim,
                                   spec.kv_element_bytes, build.tokens_per_block)
    budget = _device_budget(spec, cache, device) if device.type == "cuda" else (
        cache.max_cache_bytes or DEFAULT_CPU_CACHE_BYTES)
    per_seq = blocks_needed(build.max_seq_len, build.tokens_per_block)
    # More blocks than the envelope can ever reference would only waste memory.
    num_blocks = min(budget // per_block, build.max_batch_size * per_seq + 1)
    if num_blocks < per_seq + 1:
        raise ConfigError(
            f"KV cache: {budget / 2**20:.1f} MiB holds {max(num_blocks - 1, 0)} blocks, fewer than the {per_seq} one "
            f"sequence of max_seq_len={build.max_seq_len} needs ({(per_seq + 1) * per_block / 2**20:.1f} MiB); "
            "raise the cache memory (max_cache_bytes / gpu_memory_fraction) or rebuild with a smaller --max-seq-len")
    return PoolPlan(num_blocks, build.tokens_per_block, per_block, build.max_seq_len, spec.kv_dtype)


def activation_reserve(spec: EngineSpec) -> int:
    """Bytes kept free beside the KV cache for one step's activations and the sampler's logits."""
    cfg, build = spec.model, spec.build
    widest = max(cfg.q_size + 2 * cfg.kv_size, 2 * cfg.intermediate_size)
    activations = 4 * build.max_num_tokens * (widest + 2 * cfg.hidden_size) * DTYPE_BYTES[spec.dtype]
    logits = 3 * build.max_batch_size * cfg.vocab_size * 4
    return activations + logits


def _device_budget(spec: EngineSpec, cache: CacheConfig, device: torch.device) -> int:
    """fraction * total memory, minus what is already in use (weights), minus an activation reserve."""
    free, total = torch.cuda.mem_get_info(device)
    budget = int(cache.gpu_memory_fraction * total) - (total - free) - activation_reserve(spec)
    if cache.max_cache_bytes is not None:
        budget = min(budget, cache.max_cache_bytes)
    return max(budget, 0)
