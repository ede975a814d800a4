"""The paged KV cache: block bookkeeping (plain Python) and the device pool (tensors).

A sequence's KV lives in fixed-size blocks of `tokens_per_block` tokens; its block table lists
them in order, so token t of the sequence sits in block_ids[t // B] at offset t % B:

    block table  [7, 2, 9]          B = 4
    tokens        0..3 -> block 7,  4..7 -> block 2,  8..10 -> block 9 (one slot still free)

Block 0 is never handed out: padded positions (e.g. in captured CUDA graphs) may write there.
"""

from __future__ import annotations

from collections import deque

import torch

from ingot.errors import ConfigError

NULL_BLOCK = 0


class BlockAllocator:
    """Hands out block ids with reference counts; a block returns to the pool at count 0."""

    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 2:
            raise ConfigError(f"KV cache: num_blocks={num_blocks} is too small; need at least 2 "
                              "(raise the KV cache memory limit)")
        self.num_blocks = num_blocks
        self.ref_counts = [0] * num_blocks
        self._free: deque[int] = deque(range(1, num_blocks))

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_usable(self) -> int:
        return self.num_blocks - 1

    def allocate(self, count: int) -> list[int]:
        if count > len(self._free):
            raise RuntimeError(f"asked for {count} KV blocks with {len(self._free)} free")
        blocks = [self._free.popleft() for _ in range(count)]
        for block in blocks:
            self.ref_counts[block] = 1
        return blocks

    def incref(self, block: int) -> None:
        assert self.ref_counts[block] > 0, f"block {block} is free"
        self.ref_counts[block] += 1

    def free(self, blocks: list[int]) -> None:
        for block in blocks:
            assert self.ref_counts[block] > 0, f"double free of block {block}"
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                self._free.append(block)


def blocks_needed(num_tokens: int, tokens_per_block: int) -> int:
    return -(-num_tokens // tokens_per_block)


class KVCachePool:
    """One tensor per layer: (2, num_blocks, tokens_per_block, num_kv_heads, head_dim)."""

    def __init__(self, num_layers: int, num_blocks: int, tokens_per_block: int, num_kv_heads: int,
                 head_dim: int, dtype: torch.dtype, device: torch.device) -> None:
        shape = (2, num_blocks, tokens_per_block, num_kv_heads, head_dim)
        # Uninitialised on purpose: every backend reads only slots it has written (positions past a
        # sequence's length are never loaded), and zeroing gigabytes would only slow the start.
        self.layers = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.num_blocks = num_blocks
        self.tokens_per_block = tokens_per_block
