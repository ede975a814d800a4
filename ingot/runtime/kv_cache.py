"""The paged KV cache: block bookkeeping (plain Python) and the device pool (tensors).

A sequence's KV lives in fixed-size blocks of B = tokens_per_block tokens; its block table
lists them in order, so token t sits in block_ids[t // B] at offset t % B:

    block table  [7, 2, 9]          B = 4
    tokens        0..3 -> block 7,  4..7 -> block 2,  8..10 -> block 9 (one slot still free)

Prefix reuse. A *full* block whose KV has been computed and whose tokens are accepted (never a
speculative draft) is identified by a SHA-256 hash chain,
    key_0 = sha256(root || tokens of block 0),   key_i = sha256(key_{i-1} || tokens of block i),
tokens as 8-byte little-endian integers, root = sha256 of a namespace and any extra keys (an
adapter id, say) so caches of different kinds never meet. Equal keys mean equal token prefixes,
except with the probability of a SHA-256 collision: a wrong hit would serve another request's KV,
so the key must not collide by accident (Python's hash() of a tuple does: hash(-1) == hash(-2),
and ints equal modulo 2**61 - 1 hash alike) nor on purpose. Such blocks are registered in the
prefix cache and shared read-only: a new request whose prompt starts with the same blocks takes them (ref count
+1) instead of recomputing them. A block whose ref count drops to 0 goes to the free queue but
keeps its contents and key, so it can still be hit until it is handed out again; blocks are
handed out from the front of the free queue (least recently freed first: LRU eviction).

Block 0 is never handed out: padded positions (e.g. in captured CUDA graphs) may write there.
"""

from __future__ import annotations

import array
import hashlib
from collections import OrderedDict

import torch

from ingot.errors import ConfigError

NULL_BLOCK = 0
BlockKey = bytes  # a SHA-256 digest


def root_key(*extra_keys: str) -> BlockKey:
    """The parent of a sequence's first block: ingot's namespace plus any extra keys."""
    return hashlib.sha256("\x00".join(("ingot-prefix-cache-v1", *extra_keys)).encode()).digest()


ROOT_KEY = root_key()


def blocks_needed(num_tokens: int, tokens_per_block: int) -> int:
    return -(-num_tokens // tokens_per_block)


class BlockPool:
    """Ref-counted block ids, an LRU free queue, and the prefix-cache index over full blocks."""

    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 2:
            raise ConfigError(f"KV cache: num_blocks={num_blocks} is too small; need at least 2 "
                              "(raise the KV cache memory limit)")
        self.num_blocks = num_blocks
        self.ref_counts = [0] * num_blocks
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(1, num_blocks))
        self.key_of: dict[int, BlockKey] = {}  # cached block -> its key
        self.block_of: dict[BlockKey, int] = {}  # key -> cached block
        self._cached_free = 0  # blocks in the free queue that are also in key_of

    @property
    def num_free(self) -> int:
        """Blocks that can be handed out now (free, whether or not they still hold a cached prefix)."""
        return len(self._free)

    @property
    def num_usable(self) -> int:
        return self.num_blocks - 1

    @property
    def num_cached_free(self) -> int:
        """Free blocks that still hold a reusable prefix (kept as a count: read every step)."""
        return self._cached_free

    def allocate(self, count: int) -> list[int]:
        if count > len(self._free):
            raise RuntimeError(f"asked for {count} KV blocks with {len(self._free)} free")
        blocks = []
        for _ in range(count):
            block, _ = self._free.popitem(last=False)
            self._evict(block)
            self.ref_counts[block] = 1
            blocks.append(block)
        return blocks

    def touch(self, block: int) -> None:
        """Take one more reference to a block (a prefix hit, or a fork)."""
        if self.ref_counts[block] == 0:
            del self._free[block]
            self._cached_free -= block in self.key_of
        self.ref_counts[block] += 1

    def free(self, blocks: list[int]) -> None:
        # Freed in reverse so a sequence's tail blocks are evicted before its head: the head
        # is the part other requests are most likely to share.
        for block in reversed(blocks):
            assert self.ref_counts[block] > 0, f"double free of block {block}"
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                self._free[block] = None
                self._cached_free += block in self.key_of

    def lookup(self, key: BlockKey) -> int | None:
        return self.block_of.get(key)

    def register(self, block: int, key: BlockKey) -> None:
        """Publish a full, computed block under its key (first writer wins)."""
        if key not in self.block_of and block not in self.key_of:
            self.block_of[key] = block
            self.key_of[block] = key

    def _evict(self, block: int) -> None:
        """Called as a free block is handed out: forget the prefix it held."""
        key = self.key_of.pop(block, None)
        if key is not None:
            del self.block_of[key]
            self._cached_free -= 1


def chain_keys(token_ids: list[int], tokens_per_block: int, keys: list[BlockKey],
               limit: int | None = None, root: BlockKey = ROOT_KEY) -> list[BlockKey]:
    """Extend `keys` (the keys of the first len(keys) full blocks) to cover every full block,
    or the first `limit` blocks (tokens past them may not be known yet)."""
    full = len(token_ids) // tokens_per_block
    for index in range(len(keys), full if limit is None else min(full, limit)):
        block_tokens = array.array("q", token_ids[index * tokens_per_block:(index + 1) * tokens_per_block])
        keys.append(hashlib.sha256((keys[-1] if keys else root) + block_tokens.tobytes()).digest())
    return keys


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
