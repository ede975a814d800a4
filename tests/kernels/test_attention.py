"""KV write and paged attention (decode, prompt chunks, mixed) against the torch reference,
in Triton's interpreter on the CPU. Small odd sizes; every unwritten cache slot holds NaN."""

from __future__ import annotations

import pytest
import torch

from ingot.attention import get_backend
from ingot.attention.base import write_kv
from ingot.attention.triton_backend import plan_launches
from ingot.kernels import decode_attention, prefill_attention, write_kv_cache
from tests.kernels.paged_batch import make_batch, reference, rel_err

TOL = {torch.float32: 1e-5, torch.float16: 2e-3}


def _check_backend(seqs, heads=4, kv_heads=2, head_dim=16, tpb=8, dtype=torch.float16, window=None, seed=0):
    q, k, v, cache, meta = make_batch(seqs, heads, kv_heads, head_dim, tpb, dtype, seed=seed)
    want, want_cache = reference(q, k, v, cache, meta, head_dim ** -0.5, window)
    got = get_backend("triton").forward(q, k, v, cache, meta, head_dim ** -0.5, window)
    assert rel_err(got, want) < TOL[dtype], rel_err(got, want)
    torch.testing.assert_close(cache.float(), want_cache, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kv_write_matches_reference_and_skips_negative_slots(dtype):
    q, k, v, cache, meta = make_batch([(3, 5), (0, 2)], 2, 2, 8, 4, dtype, seed=1)
    want = cache.clone()
    write_kv(want, k, v, meta.slot_mapping)
    slots = meta.slot_mapping.clone()
    slots[1] = -1  # a padding token: written nowhere
    want_skip = cache.clone()
    keep = torch.arange(len(slots)) != 1
    write_kv(want_skip, k[keep], v[keep], meta.slot_mapping[keep])
    write_kv_cache(k, v, cache, slots)
    torch.testing.assert_close(cache, want_skip, equal_nan=True, atol=0, rtol=0)


@pytest.mark.parametrize("seqs", [
    [(0, 1)],  # a first token
    [(37, 1), (5, 1), (0, 1), (16, 1)],  # decode, lengths across block edges
    [(20, 3), (9, 8), (0, 5)],  # speculative verify: several new tokens, causal among them
])
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_decode(seqs, kv_heads):
    _check_backend(seqs, heads=4, kv_heads=kv_heads)


@pytest.mark.parametrize("seqs", [
    [(0, 19)],  # a fresh prompt, not a multiple of any tile
    [(24, 11), (0, 9)],  # a later chunk over its cached prefix (chunked prefill / prefix reuse)
    [(5, 40), (13, 17), (0, 33)],
])
def test_prefill(seqs):
    _check_backend(seqs, heads=6, kv_heads=2, head_dim=32, tpb=4)


@pytest.mark.parametrize("seqs", [
    [(30, 1), (12, 2), (0, 21)],  # decodes first, as the scheduler orders them
    [(0, 17), (40, 1)],  # prefill first
    [(3, 1), (9, 12), (20, 4), (1, 10), (7, 1)],  # interleaved: both kernels skip the other's
])
def test_mixed_batches(seqs):
    _check_backend(seqs, dtype=torch.float32, seed=len(seqs))


@pytest.mark.parametrize("seqs", [[(40, 1), (3, 1)], [(30, 12), (0, 23)], [(25, 4)]])
def test_sliding_window(seqs):
    _check_backend(seqs, window=7, tpb=4)


def test_head_dim_not_a_power_of_two_and_mha():
    _check_backend([(10, 1), (4, 13)], heads=3, kv_heads=3, head_dim=24)


@pytest.mark.parametrize("num_splits", [1, 2, 4, 8])
def test_decode_splits_agree(num_splits):
    """Every split count gives the reference answer, including splits with no keys at all."""
    q, k, v, cache, meta = make_batch([(50, 2), (3, 1), (17, 1)], 8, 2, 16, 8, torch.float16, seed=num_splits)
    want, _ = reference(q, k, v, cache, meta, 0.25, None)
    write_kv_cache(k, v, cache, meta.slot_mapping)
    out = torch.full_like(q, float("nan"))
    decode_attention(q, cache, out, meta.query_start_loc, meta.seq_lens, meta.block_tables, 0.25, None,
                     max_query_len=2, num_splits=num_splits)
    assert rel_err(out, want) < TOL[torch.float16]


def test_prefill_tile_sizes_agree():
    q, k, v, cache, meta = make_batch([(9, 30), (0, 7)], 4, 1, 16, 4, torch.float32, seed=5)
    want, _ = reference(q, k, v, cache, meta, 0.3, None)
    write_kv_cache(k, v, cache, meta.slot_mapping)
    for block_m, block_n in [(16, 32), (32, 16)]:
        out = torch.full_like(q, float("nan"))
        prefill_attention(q, cache, out, meta.query_start_loc, meta.seq_lens, meta.block_tables, 0.3, None,
                          max_query_len=30, block_m=block_m, block_n=block_n)
        assert rel_err(out, want) < TOL[torch.float32]


def test_plan_launches_uses_host_lengths_only():
    plan = plan_launches([0, 1, 2, 30, 31, 40], group=4)  # lens 1, 1, 28, 1, 9
    assert (plan.decode.begin, plan.decode.count, plan.decode.max_query_len) == (0, 4, 1)
    assert (plan.prefill.begin, plan.prefill.count, plan.prefill.max_query_len) == (2, 3, 28)
    assert plan_launches([0, 4, 8], group=32).decode.max_query_len == 4  # 4 tokens x 32 heads = 128 rows
    assert plan_launches([0, 8], group=32).decode is None


def test_attention_bad_arguments():
    q, k, v, cache, meta = make_batch([(3, 2)], 4, 2, 16, 4, torch.float16)
    args = (meta.query_start_loc, meta.seq_lens, meta.block_tables, 0.25, None)
    with pytest.raises(ValueError, match="kv_cache: dtype"):
        decode_attention(q, cache.float(), torch.empty_like(q), *args, max_query_len=2)
    with pytest.raises(ValueError, match="not a multiple"):
        decode_attention(q[:, :3], cache, torch.empty_like(q[:, :3]), *args, max_query_len=2)
    with pytest.raises(ValueError, match="block_tables: dtype"):
        prefill_attention(q, cache, torch.empty_like(q), meta.query_start_loc, meta.seq_lens,
                          meta.block_tables.long(), 0.25, None, max_query_len=2)
    with pytest.raises(ValueError, match="max_query_len=9"):
        decode_attention(q, cache, torch.empty_like(q), *args, max_query_len=9)
    with pytest.raises(ValueError, match="slot_mapping: shape"):
        write_kv_cache(k, v, cache, meta.slot_mapping[:1])
