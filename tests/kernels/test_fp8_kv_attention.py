"""FP8 KV cache in Triton's interpreter: the KV-write kernel stores the bytes fp8_format.quantize
gives, and the decode and prompt-chunk kernels, dequantizing as they load, give the output of the
torch reference that rounds K and V through E4M3 with the layer's scales. Odd sizes, several seeds;
fp16 and fp32 queries (the interpreter's bf16 tl.dot is wrong, tests/gpu covers bf16)."""

from __future__ import annotations

import pytest
import torch

from ingot.attention import get_backend
from ingot.attention.base import write_kv
from ingot.kernels import decode_attention, prefill_attention, write_kv_cache
from ingot.quantization.fp8_format import FP8_DTYPE
from tests.kernels.paged_batch import make_batch, reference, rel_err

TOL = {torch.float32: 1e-5, torch.float16: 2e-3}
# k_scale maps |k| <= ~3.2 onto 448 (a few N(0, 1) values saturate), v_scale leaves headroom
SCALES = torch.tensor([0.0071, 0.013])


def _check_backend(seqs, heads=4, kv_heads=2, head_dim=16, tpb=8, dtype=torch.float16, window=None, seed=0):
    q, k, v, cache, meta = make_batch(seqs, heads, kv_heads, head_dim, tpb, dtype, seed=seed, kv_scale=SCALES)
    want, want_cache = reference(q, k, v, cache, meta, head_dim ** -0.5, window, SCALES)
    got = get_backend("triton").forward(q, k, v, cache, meta, head_dim ** -0.5, window, SCALES)
    assert cache.dtype == FP8_DTYPE
    assert rel_err(got, want) < TOL[dtype], rel_err(got, want)
    torch.testing.assert_close(cache.float(), want_cache.float(), equal_nan=True, atol=0, rtol=0)
    return got


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("scales", ["calibrated", "unit"])
def test_fp8_kv_write_stores_what_quantize_gives(dtype, scales):
    """Every byte, saturation at +-448 and ties to even included (exact ties need unit scales)."""
    kv_scale = SCALES if scales == "calibrated" else torch.ones(2)
    q, k, v, cache, meta = make_batch([(3, 7), (0, 5), (11, 1)], 2, 3, 24, 4, dtype, seed=len(scales),
                                      kv_scale=kv_scale)
    k[0, 0, :5] = torch.tensor([1000.0, -1000.0, 17.0, 19.0, -0.0], dtype=dtype)
    slots = meta.slot_mapping.clone()
    slots[2] = -1  # a padding token: written nowhere
    keep = torch.arange(len(slots)) != 2
    want = cache.clone()
    write_kv(want, k[keep], v[keep], meta.slot_mapping[keep], kv_scale)
    write_kv_cache(k, v, cache, slots, kv_scale)
    torch.testing.assert_close(cache.float(), want.float(), equal_nan=True, atol=0, rtol=0)
    first = cache[0].view(-1, 3, 24)[meta.slot_mapping[0], 0, :4].float().tolist()
    assert first[:2] == [448.0, -448.0]
    if scales == "unit":
        assert first[2:] == [16.0, 20.0]  # the ties 17 and 19 go to the even neighbour


@pytest.mark.parametrize("seqs,kv_heads,seed", [
    ([(37, 1), (5, 1), (0, 1), (16, 1)], 2, 0),  # decode, lengths across block edges
    ([(20, 3), (9, 8), (0, 5)], 1, 1),  # speculative verify: several new tokens, causal among them
    ([(13, 1), (2, 2)], 4, 2),
])
def test_fp8_decode(seqs, kv_heads, seed):
    _check_backend(seqs, heads=4, kv_heads=kv_heads, seed=seed)


@pytest.mark.parametrize("seqs,seed", [
    ([(0, 19)], 3),  # a fresh prompt, not a multiple of any tile
    ([(24, 11), (0, 9)], 4),  # a later chunk over its cached prefix (chunked prefill / prefix reuse)
])
def test_fp8_prefill(seqs, seed):
    _check_backend(seqs, heads=6, kv_heads=2, head_dim=24, tpb=4, seed=seed)


@pytest.mark.parametrize("seqs,dtype,window", [
    ([(3, 1), (9, 12), (20, 4), (1, 10), (7, 1)], torch.float32, None),  # both kernels skip the other's
    ([(30, 12), (25, 4), (40, 1)], torch.float16, 7),  # sliding window across fp8 tiles
])
def test_fp8_mixed_batches_and_window(seqs, dtype, window):
    _check_backend(seqs, dtype=dtype, window=window, seed=len(seqs))


def test_fp8_kv_is_rounded_not_passed_through():
    """The fp8 answer is the E4M3 reference's, measurably away from the 16-bit cache's."""
    seqs = [(21, 1), (6, 9)]
    fp8 = _check_backend(seqs, dtype=torch.float32, seed=7)
    q, k, v, cache, meta = make_batch(seqs, 4, 2, 16, 8, torch.float32, seed=7)
    exact, _ = reference(q, k, v, cache, meta, 0.25, None)
    assert rel_err(fp8, exact) > 1e-3  # E4M3 has 3 mantissa bits: ~3% per element


@pytest.mark.parametrize("num_splits", [1, 4])
def test_fp8_decode_splits_and_prefill_tiles(num_splits):
    q, k, v, cache, meta = make_batch([(50, 2), (3, 1), (17, 1)], 8, 2, 16, 8, torch.float16, seed=num_splits,
                                      kv_scale=SCALES)
    want, _ = reference(q, k, v, cache, meta, 0.25, None, SCALES)
    write_kv_cache(k, v, cache, meta.slot_mapping, SCALES)
    out = torch.full_like(q, float("nan"))
    decode_attention(q, cache, out, meta.query_start_loc, meta.seq_lens, meta.block_tables, 0.25, None,
                     max_query_len=2, num_splits=num_splits, kv_scale=SCALES)
    assert rel_err(out, want) < TOL[torch.float16]
    out = torch.full_like(q, float("nan"))
    prefill_attention(q, cache, out, meta.query_start_loc, meta.seq_lens, meta.block_tables, 0.25, None,
                      max_query_len=2, block_m=16, block_n=32, kv_scale=SCALES)
    assert rel_err(out, want) < TOL[torch.float16]


def test_fp8_kv_scale_refused_with_the_fix():
    q, k, v, cache, meta = make_batch([(3, 2)], 4, 2, 16, 4, torch.float16, kv_scale=SCALES)
    args = (meta.query_start_loc, meta.seq_lens, meta.block_tables, 0.25, None)
    with pytest.raises(ValueError, match=r"kv_scale: an fp8 KV cache needs the layer's \(2,\) float32"):
        decode_attention(q, cache, torch.empty_like(q), *args, max_query_len=2)
    with pytest.raises(ValueError, match=r"kv_scale: shape \(3,\)"):
        write_kv_cache(k, v, cache, meta.slot_mapping, torch.ones(3))
    with pytest.raises(ValueError, match="kv_scale: dtype"):
        prefill_attention(q, cache, torch.empty_like(q), *args, max_query_len=2, kv_scale=SCALES.double())
    with pytest.raises(ValueError, match="only an fp8 .* cache is scaled: pass kv_scale=None"):
        write_kv_cache(k, v, cache.half(), meta.slot_mapping, SCALES)
