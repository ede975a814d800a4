"""FP8 KV cache on CUDA: the Triton KV-write, decode and prompt-chunk kernels against the torch
reference that rounds K and V through E4M3 (the cases of test_attention.py, fp8 pool), under a
CUDA graph and without host syncs; then an engine of the Llama-3.1-8B shape (2 layers) built with
--kv-cache-dtype fp8: its logits against transformers' model with K and V rounded at the engine's
scales, graph decode against eager, and a pool of twice the tokens."""

from __future__ import annotations

import random
import zlib

import pytest
import torch

from ingot.attention import get_backend
from tests.gpu.test_attention import CASES, TOL, _rand_seqs
from tests.gpu.test_engine_gpu import _diverges_only_at_near_ties, checkpoint  # noqa: F401 (a fixture)
from tests.kernels.paged_batch import make_batch, reference, rel_err

# N(0, 1) keys and values: k_scale puts 448 at |k| = 4 (the few larger ones saturate), v_scale at 5
SCALES = (4 / 448, 5 / 448)
FP8_CASES = ["decode_b1_8k", "decode_b1_8k_fp16_odd", "decode_b64", "decode_b256", "decode_mha_d64",
             "decode_gqa8_fp16", "verify", "decode_window", "prefill_1000", "prefill_chunk_over_prefix",
             "prefill_batch_mha_d64_fp16", "prefill_gqa8", "prefill_window", "prefill_long_context",
             "mixed_decode_first", "mixed_interleaved"]


def _scales() -> torch.Tensor:
    return torch.tensor(SCALES, dtype=torch.float32, device="cuda")


@pytest.mark.parametrize("name", FP8_CASES)
def test_fp8_kv_backend_matches_reference(name):
    seqs, heads, kv_heads, head_dim, tpb, dtype, window = CASES[name]
    kv_scale = _scales()
    q, k, v, cache, meta = make_batch(seqs, heads, kv_heads, head_dim, tpb, dtype, device="cuda",
                                      seed=zlib.crc32(name.encode()), kv_scale=kv_scale)
    scale = head_dim ** -0.5
    want, want_cache = reference(q, k, v, cache, meta, scale, window, kv_scale)
    got = get_backend("triton").forward(q, k, v, cache, meta, scale, window, kv_scale)
    assert cache.dtype == torch.float8_e4m3fn
    # the kernels dequantize to the query's dtype, the reference to fp32: the 16-bit tolerance covers it
    assert rel_err(got, want) < TOL[dtype], rel_err(got, want)
    torch.testing.assert_close(cache.float(), want_cache.float(), equal_nan=True, atol=0, rtol=0)


def test_fp8_kv_forward_never_syncs():
    seqs = [(30, 1), (2000, 1), (100, 5), (0, 700)]
    q, k, v, cache, meta = make_batch(seqs, 32, 8, 128, 16, torch.bfloat16, device="cuda", kv_scale=_scales())
    backend, kv_scale = get_backend("triton"), _scales()
    backend.forward(q, k, v, cache, meta, 0.1, None, kv_scale)  # compile outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        backend.forward(q, k, v, cache, meta, 0.1, None, kv_scale)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_fp8_kv_decode_replays_in_a_cuda_graph():
    """Capture a pure-decode step on an fp8 pool; replay it after changing every device input in
    place, the layer's scales included (the kernels read them from memory at every replay)."""
    backend = get_backend("triton")
    scales = [_scales(), torch.tensor([3 / 448, 6 / 448], device="cuda")]
    batch = [make_batch(_rand_seqs(8, 3000, 1, seed), 32, 8, 128, 16, torch.bfloat16, device="cuda",
                        seed=seed, num_blocks=8 * 200, kv_scale=s) for seed, s in zip((10, 11), scales)]
    q, k, v, cache, meta = batch[0]
    kv_scale = scales[0].clone()
    width = max(b[4].block_tables.shape[1] for b in batch)
    meta.block_tables = torch.nn.functional.pad(meta.block_tables, (0, width - meta.block_tables.shape[1]))
    backend.forward(q, k, v, cache, meta, 0.1, None, kv_scale)  # compile
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = backend.forward(q, k, v, cache, meta, 0.1, None, kv_scale)
    q2, k2, v2, cache2, meta2 = batch[1]
    for dst, src in ((q, q2), (k, k2), (v, v2), (cache, cache2), (meta.seq_lens, meta2.seq_lens),
                     (meta.slot_mapping, meta2.slot_mapping), (meta.query_start_loc, meta2.query_start_loc),
                     (kv_scale, scales[1])):
        dst.copy_(src)
    meta.block_tables.zero_()[:, : meta2.block_tables.shape[1]].copy_(meta2.block_tables)
    want, _ = reference(q2, k2, v2, cache2, meta2, 0.1, None, scales[1])
    graph.replay()
    assert rel_err(out, want) < TOL[torch.bfloat16]


# ---- an engine of the 8B shape with an fp8 KV cache ----

@pytest.fixture(scope="module")
def fp8_kv_engine(checkpoint, tmp_path_factory):  # noqa: F811
    from ingot.builder.build import build_engine
    from ingot.config import BuildConfig, QuantConfig
    from tests.helpers_data import hamlet_path

    calib = tmp_path_factory.mktemp("calib") / "calib.md"
    calib.write_text(hamlet_path().read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    directory = tmp_path_factory.mktemp("engines") / "llama8b-2l-fp8kv"
    build_engine(str(checkpoint[0]), directory, BuildConfig(dtype="bf16", max_seq_len=4096, max_batch_size=64,
                                                            max_num_tokens=4096), device="cuda",
                 quant=QuantConfig("none", {"calib_data": str(calib), "calib_size": 4, "calib_seq_len": 128},
                                   kv_cache_dtype="fp8"))
    return directory


def _engine(engine_dir, **kwargs):
    from ingot.config import CacheConfig
    from ingot.runtime.engine import LLMEngine

    return LLMEngine(engine_dir, CacheConfig(max_cache_bytes=1 << 30), device="cuda", **kwargs)


def _prompts(seed: int, lengths) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(128256) for _ in range(n)] for n in lengths]


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_fp8_kv_prefill_logits_match_transformers_rounding_kv(checkpoint, fp8_kv_engine, backend):  # noqa: F811
    from ingot.sampling_params import SamplingParams
    from tests.quantization.test_fp8_kv_engine import _e4m3, _hf_attention

    engine = _engine(fp8_kv_engine, attention_backend=backend, enforce_eager=True)
    scales = torch.stack([engine.model.layers[str(i)].self_attn.kv_scale for i in range(2)])  # (layers, 2)
    assert (scales > 0).all() and (scales < 1).all(), scales

    def round_kv(layer, key, value):
        return _e4m3(key, scales[layer, 0]), _e4m3(value, scales[layer, 1])

    hf_model = checkpoint[1].cuda()
    for prompt in _prompts(1, (1, 7, 64, 300, 1030)):
        request = engine.add_request(prompt, SamplingParams(max_tokens=1))
        inputs = engine.runner.prepare(engine.scheduler.schedule())
        with torch.inference_mode(), _hf_attention(hf_model, round_kv):
            ours = engine.model.compute_logits(engine.model(inputs.input_ids, inputs.positions, engine.pool.layers,
                                                            inputs.metadata))
            theirs = hf_model(torch.tensor([prompt], device="cuda")).logits[0].float()
        engine.abort_request(request.request_id)
        assert (ours - theirs).abs().max() <= 0.03 * theirs.abs().max(), f"len {len(prompt)}"
        agree = (ours.argmax(-1) == theirs.argmax(-1)).float().mean()
        assert agree >= 0.9, f"top-1 agreement {agree:.2f} at len {len(prompt)}"


def test_fp8_kv_graph_decode_and_prefix_hits_equal_eager(fp8_kv_engine):
    """Decode through captured graphs, verify-sized steps included, reading an fp8 pool; the second
    pass of the same prompts reads their prefixes from the cache's fp8 blocks."""
    from ingot.sampling_params import SamplingParams

    prompts = _prompts(2, (5, 17, 33, 100, 260, 9, 1))
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True, logprobs=2)

    def generate(engine):
        requests = [engine.add_request(p, params) for p in prompts]
        while engine.has_unfinished_requests():
            engine.step()
        return requests

    graphed = _engine(fp8_kv_engine)
    assert graphed.runner.graphs is not None and graphed.pool.layers[0].dtype == torch.float8_e4m3fn
    replayed, eager = generate(graphed), generate(_engine(fp8_kv_engine, enforce_eager=True))
    assert [r.output_token_ids for r in replayed] == [r.output_token_ids for r in eager]
    again = generate(graphed)  # prefix-cache hits on the blocks the first pass wrote
    assert _diverges_only_at_near_ties(prompts, [r.output_token_ids for r in again], replayed) >= len(prompts) // 2


def test_fp8_kv_pool_holds_twice_the_tokens(checkpoint, fp8_kv_engine, tmp_path):  # noqa: F811
    from ingot.builder.build import build_engine
    from ingot.config import BuildConfig

    bf16_dir = tmp_path / "bf16"
    build_engine(str(checkpoint[0]), bf16_dir, BuildConfig(dtype="bf16", max_seq_len=4096, max_batch_size=64,
                                                           max_num_tokens=4096), device="cuda")
    fp8, bf16 = _engine(fp8_kv_engine, enforce_eager=True), _engine(bf16_dir, enforce_eager=True)
    assert fp8.pool_plan.bytes_per_token * 2 == bf16.pool_plan.bytes_per_token == 2 * 2 * 8 * 128 * 2
    assert fp8.pool_plan.num_blocks == 2 * bf16.pool_plan.num_blocks  # 1 GiB each: 16,384 and 8,192 blocks
    used = sum(t.numel() * t.element_size() for t in fp8.pool.layers)
    assert used == fp8.pool_plan.num_blocks * fp8.pool_plan.bytes_per_block
