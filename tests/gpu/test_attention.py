"""The Triton attention backend on CUDA against the torch reference (fp32, same inputs).

Covers decode at batch 1 and large, long contexts (8k+), speculative verify (2..8 new tokens),
prompt chunks over cached prefixes, mixed batches, GQA ratios 1/4/8, head_dim 64/128,
sliding windows; and that forward never syncs and replays inside a CUDA graph.
"""

from __future__ import annotations

import random
import zlib

import pytest
import torch

from ingot.attention import get_backend
from tests.kernels.paged_batch import make_batch, reference, rel_err

TOL = {torch.bfloat16: 1.2e-2, torch.float16: 2e-3}


def _rand_seqs(n, max_ctx, query_len, seed):
    rng = random.Random(seed)
    return [(rng.randint(0, max_ctx), query_len if isinstance(query_len, int) else rng.choice(query_len))
            for _ in range(n)]


CASES = {  # name: (seqs, heads, kv_heads, head_dim, tokens_per_block, dtype, window)
    "decode_b1_8k": ([(8191, 1)], 32, 8, 128, 16, torch.bfloat16, None),
    "decode_b1_8k_fp16_odd": ([(8500, 1)], 32, 8, 128, 64, torch.float16, None),
    "decode_b64": (_rand_seqs(64, 2100, 1, 1), 32, 8, 128, 16, torch.bfloat16, None),
    "decode_b256": (_rand_seqs(256, 300, 1, 2), 32, 8, 128, 64, torch.bfloat16, None),
    "decode_mha_d64": ([(8500, 1), (17, 1), (1000, 1)], 32, 32, 64, 16, torch.bfloat16, None),
    "decode_gqa8_fp16": (_rand_seqs(5, 3000, 1, 3), 64, 8, 128, 16, torch.float16, None),
    "verify": ([(1999, 2), (40, 5), (777, 8), (0, 3)], 32, 8, 128, 16, torch.bfloat16, None),
    "decode_window": (_rand_seqs(4, 4000, (1, 4), 4), 32, 8, 128, 16, torch.bfloat16, 1024),
    "prefill_1000": ([(0, 1000)], 32, 8, 128, 16, torch.bfloat16, None),
    "prefill_chunk_over_prefix": ([(3000, 517), (0, 2048)], 32, 8, 128, 16, torch.bfloat16, None),
    "prefill_batch_mha_d64_fp16": (_rand_seqs(8, 50, range(9, 700), 5), 32, 32, 64, 16, torch.float16, None),
    "prefill_gqa8": ([(100, 777)], 64, 8, 128, 64, torch.bfloat16, None),
    "prefill_window": ([(0, 1500), (700, 300)], 32, 8, 128, 16, torch.bfloat16, 256),
    "prefill_long_context": ([(8000, 300)], 32, 8, 128, 16, torch.bfloat16, None),
    "mixed_decode_first": (_rand_seqs(60, 3000, 1, 6) + [(700, 300), (0, 1000)], 32, 8, 128, 16,
                           torch.bfloat16, None),
    "mixed_interleaved": ([(5, 1), (300, 64), (1200, 4), (0, 33), (9000, 1)], 32, 8, 128, 16,
                          torch.bfloat16, None),
}


@pytest.mark.parametrize("name", list(CASES))
def test_backend_matches_reference(name):
    seqs, heads, kv_heads, head_dim, tpb, dtype, window = CASES[name]
    q, k, v, cache, meta = make_batch(seqs, heads, kv_heads, head_dim, tpb, dtype, device="cuda", seed=zlib.crc32(name.encode()))
    scale = head_dim ** -0.5
    want, want_cache = reference(q, k, v, cache, meta, scale, window)
    got = get_backend("triton").forward(q, k, v, cache, meta, scale, window)
    assert rel_err(got, want) < TOL[dtype], rel_err(got, want)
    torch.testing.assert_close(cache.float(), want_cache, equal_nan=True, atol=0, rtol=0)


def test_forward_never_syncs():
    seqs = [(30, 1), (2000, 1), (100, 5), (0, 700)]
    q, k, v, cache, meta = make_batch(seqs, 32, 8, 128, 16, torch.bfloat16, device="cuda")
    backend = get_backend("triton")
    backend.forward(q, k, v, cache, meta, 0.1, None)  # compile outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        backend.forward(q, k, v, cache, meta, 0.1, None)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_decode_replays_in_a_cuda_graph():
    """Capture one pure-decode step; replay it after changing every device input in place."""
    backend = get_backend("triton")
    batch = [make_batch(_rand_seqs(8, 3000, 1, seed), 32, 8, 128, 16, torch.bfloat16, device="cuda",
                        seed=seed, num_blocks=8 * 200) for seed in (10, 11)]
    q, k, v, cache, meta = batch[0]
    width = max(b[4].block_tables.shape[1] for b in batch)
    meta.block_tables = torch.nn.functional.pad(meta.block_tables, (0, width - meta.block_tables.shape[1]))
    backend.forward(q, k, v, cache, meta, 0.1, None)  # compile
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = backend.forward(q, k, v, cache, meta, 0.1, None)
    q2, k2, v2, cache2, meta2 = batch[1]
    for dst, src in ((q, q2), (k, k2), (v, v2), (cache, cache2), (meta.seq_lens, meta2.seq_lens),
                     (meta.slot_mapping, meta2.slot_mapping), (meta.query_start_loc, meta2.query_start_loc)):
        dst.copy_(src)
    meta.block_tables.zero_()[:, : meta2.block_tables.shape[1]].copy_(meta2.block_tables)
    want, _ = reference(q2, k2, v2, cache2, meta2, 0.1, None)
    graph.replay()
    assert rel_err(out, want) < TOL[torch.bfloat16]
