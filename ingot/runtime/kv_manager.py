"""KVCacheManager: the request-level side of the block pool.

For each request it answers: which leading blocks of the prompt are already cached (prefix
reuse), can the blocks for this step's new tokens be had, which computed blocks become
shareable, and it frees everything when the request leaves. Speculative tokens that were
computed and then rejected are rewound:

    computed:  [ accepted ............ | rejected drafts ]      rewind(request, len(rejected))
    blocks:    [ b0 ][ b1 ][ b2 ][ b3 ]                  ->    [ b0 ][ b1 ][ b2 ]   b3 freed
    published: [ b0 ][ b1 ]  (full blocks of accepted tokens only; b2 is published once full)
"""

from __future__ import annotations

from ingot.runtime.kv_cache import BlockPool, blocks_needed, chain_keys
from ingot.runtime.request import Request


class KVCacheManager:
    def __init__(self, pool: BlockPool, tokens_per_block: int, enable_prefix_caching: bool = True) -> None:
        self.pool = pool
        self.tokens_per_block = tokens_per_block
        self.enable_prefix_caching = enable_prefix_caching

    def find_cached_prefix(self, request: Request) -> list[int]:
        """Cached blocks equal to the request's leading full blocks. At least one token is always
        left to compute, because the next token's logits come from the last one."""
        if not self.enable_prefix_caching:
            return []
        keys = chain_keys(request.token_ids, self.tokens_per_block, request.block_keys)
        hits = []
        for key in keys[: (request.num_tokens - 1) // self.tokens_per_block]:
            block = self.pool.lookup(key)
            if block is None:
                break
            hits.append(block)
        return hits

    def blocks_to_add(self, request: Request, num_new_tokens: int, cached: list[int] = ()) -> int:
        """Fresh blocks needed so the table covers computed + cached + new tokens."""
        covered = request.num_computed_tokens + len(cached) * self.tokens_per_block + num_new_tokens
        return max(blocks_needed(covered, self.tokens_per_block) - len(request.block_ids) - len(cached), 0)

    def free_after_adopting(self, cached: list[int]) -> int:
        """Free blocks left once `cached` are taken (cached blocks with no owner sit in the free queue)."""
        return self.pool.num_free - sum(1 for block in cached if self.pool.ref_counts[block] == 0)

    def allocate(self, request: Request, num_new_tokens: int, cached: list[int] = ()) -> bool:
        """Adopt `cached` (marking their tokens computed) and add blocks for num_new_tokens; all or nothing."""
        if not cached and request.num_computed_tokens + num_new_tokens <= len(request.block_ids) * self.tokens_per_block:
            return True  # the common decode step: the last block still has room
        fresh = self.blocks_to_add(request, num_new_tokens, cached)
        if fresh > self.free_after_adopting(cached):
            return False
        for block in cached:
            self.pool.touch(block)
        request.block_ids.extend(cached)
        request.num_computed_tokens += len(cached) * self.tokens_per_block
        request.num_registered_blocks = len(request.block_ids) if cached else request.num_registered_blocks
        request.block_ids.extend(self.pool.allocate(fresh))
        return True

    def rewind(self, request: Request, num_tokens: int) -> None:
        """Forget the KV of the request's last `num_tokens` computed tokens (rejected drafts) and
        free the blocks that hold none of the kept tokens. Published blocks are never rewound:
        only full blocks of accepted tokens are published."""
        if num_tokens <= 0:
            return
        assert num_tokens <= request.num_computed_tokens, (num_tokens, request.num_computed_tokens)
        request.num_computed_tokens -= num_tokens
        keep = blocks_needed(request.num_computed_tokens, self.tokens_per_block)
        assert keep >= request.num_registered_blocks, "a published block holds rejected tokens"
        released = request.block_ids[keep:]
        del request.block_ids[keep:]
        self.pool.free(released)

    def publish_accepted(self, request: Request) -> None:
        """Publish the request's blocks that are full of computed, accepted tokens. Tokens in
        request.token_ids are accepted; drafts being verified are not among them, and a step
        still in flight has computed (or is computing) KV the stream order makes safe to reuse."""
        if not self.enable_prefix_caching:
            return
        full = min(request.num_computed_tokens, request.num_tokens) // self.tokens_per_block
        if full <= request.num_registered_blocks:
            return
        keys = chain_keys(request.token_ids, self.tokens_per_block, request.block_keys, limit=full)
        for index in range(request.num_registered_blocks, full):
            self.pool.register(request.block_ids[index], keys[index])
        request.num_registered_blocks = full

    def free(self, request: Request) -> None:
        self.pool.free(request.block_ids)
        request.block_ids = []
        request.num_registered_blocks = 0
