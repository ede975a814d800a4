"""Microbenchmark of ingot's Triton kernels on one GPU, beside the card's ceilings and torch peers.

    PYTHONPATH=. python bench/kernels_gpu.py --out DIR [--commit SHA] [--sweep]

Measures, in one run: device-to-device copy bandwidth (bytes read + written) and the bf16 matmul
rate (8192^3); decode attention (Llama-3.1-8B heads 32/8, head_dim 128, bf16) at batch 1/64/256
and context 128/2048/8192 as achieved HBM bandwidth (KV bytes read / time) against the copy
bandwidth, beside torch SDPA on a dense (unpaged) cache; prompt-chunk attention (2048 tokens) in
TFLOP/s against the matmul rate, beside SDPA (flash); the element-wise kernels against the torch
layers. --sweep also times a few tile configurations. Writes DIR/DATE-DEVICE-kernels.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import sys
import time

import torch
import torch.nn.functional as F
from triton.testing import do_bench

from ingot.kernels import (
    apply_rotary, decode_attention, fused_add_rmsnorm, prefill_attention, silu_and_mul,
)
from ingot.layers.activation import silu_and_mul as torch_silu_and_mul
from ingot.layers.norm import RMSNorm
from ingot.layers.rotary import RotaryEmbedding

HEADS, KV_HEADS, HEAD_DIM, TPB, DTYPE = 32, 8, 128, 16, torch.bfloat16


def bench_ms(fn) -> float:
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def gpu_us(calls: list) -> float:
    """Device time per call: all calls (one per copy of the inputs, so that no call finds its
    inputs still in L2 from the last) captured in one CUDA graph, its replays timed; launch
    gaps and host overhead are left out, as in the engine's captured decode steps."""
    for call in calls:
        call()  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    return bench_ms(graph.replay) * 1e3 / len(calls)


def host_us(call, n: int = 50) -> float:
    """Host time to launch one call (argument checks, allocations, Triton's launcher)."""
    call()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        call()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / n * 1e6


def copies_for(nbytes: int, target: int = 512 << 20, most: int = 32) -> int:
    return max(1, min(most, -(-target // nbytes)))


def ceilings() -> dict:
    x = torch.randn(2 ** 29, device="cuda", dtype=DTYPE)  # 1 GiB
    y = torch.empty_like(x)
    copy_ms = bench_ms(lambda: y.copy_(x))
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=DTYPE) for _ in range(2))
    mm_ms = bench_ms(lambda: a @ b)
    return {"copy_tbps": 2 * x.numel() * 2 / copy_ms / 1e9, "matmul_tflops": 2 * 8192 ** 3 / mm_ms / 1e9}


def paged_batch(batch: int, context: int, query_len: int):
    """A cache of batch x context tokens at shuffled block ids, each sequence's last query_len new."""
    blocks = -(-context // TPB)
    ids = torch.randperm(batch * blocks, device="cuda", dtype=torch.int64).to(torch.int32)
    cache = torch.randn(2, batch * blocks, TPB, KV_HEADS, HEAD_DIM, device="cuda", dtype=DTYPE)
    meta = dict(
        query_start_loc=torch.arange(0, batch + 1, device="cuda", dtype=torch.int32) * query_len,
        seq_lens=torch.full((batch,), context, device="cuda", dtype=torch.int32),
        block_tables=ids.view(batch, blocks),
    )
    q = torch.randn(batch * query_len, HEADS, HEAD_DIM, device="cuda", dtype=DTYPE)
    return q, cache, meta


def decode_case(batch: int, context: int, query_len: int = 1, peer: bool = True, **tiles) -> dict:
    kv_bytes = 2 * batch * context * KV_HEADS * HEAD_DIM * 2
    calls = [decode_call(batch, context, query_len, tiles) for _ in range(copies_for(kv_bytes))]
    us = gpu_us(calls)
    row = {"batch": batch, "context": context, "query_len": query_len, "gpu_us": us, "host_us": host_us(calls[0]),
           "copies": len(calls), "kv_gbytes": kv_bytes / 1e9, "gbps": kv_bytes / us / 1e3, **tiles}
    del calls
    if peer and query_len == 1:
        row.update(sdpa_decode(batch, context, kv_bytes))
    return row


def decode_call(batch: int, context: int, query_len: int, tiles: dict):
    q, cache, meta = paged_batch(batch, context, query_len)
    out = torch.empty_like(q)
    return lambda: decode_attention(q, cache, out, meta["query_start_loc"], meta["seq_lens"], meta["block_tables"],
                                    HEAD_DIM ** -0.5, None, max_query_len=query_len, **tiles)


def sdpa_call(batch: int, heads: int, q_len: int, kv_len: int, causal: bool):
    """torch SDPA (B, H, S, D) with GQA (no KV copy), flash where it takes the shape."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(batch, heads, q_len, HEAD_DIM, device="cuda", dtype=DTYPE)
    k, v = (torch.randn(batch, KV_HEADS, kv_len, HEAD_DIM, device="cuda", dtype=DTYPE) for _ in range(2))

    def call():
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
    return call


def sdpa_decode(batch: int, context: int, kv_bytes: int) -> dict:
    """Peer: SDPA over a dense (B, Hkv, ctx, D) cache, which needs no paging."""
    try:
        us = gpu_us([sdpa_call(batch, HEADS, 1, context, False) for _ in range(copies_for(kv_bytes))])
    except RuntimeError as err:
        return {"sdpa_error": str(err)[:200]}
    return {"sdpa_gpu_us": us, "sdpa_gbps": kv_bytes / us / 1e3}


def prefill_case(batch: int, new: int, cached: int, peer: bool = True, **tiles) -> dict:
    calls = [prefill_call(batch, new, cached, tiles) for _ in range(4)]
    us = gpu_us(calls)
    # causal: new token i attends cached + i + 1 keys; QK^T and PV, 2 flops per multiply-add
    flops = 4 * batch * sum(cached + i + 1 for i in range(new)) * HEADS * HEAD_DIM
    row = {"batch": batch, "new_tokens": new, "cached": cached, "gpu_us": us, "host_us": host_us(calls[0]),
           "tflops": flops / us / 1e6, **tiles}
    del calls
    if peer and cached == 0:
        peer_us = gpu_us([sdpa_call(batch, HEADS, new, new, True) for _ in range(4)])
        row.update(sdpa_gpu_us=peer_us, sdpa_tflops=flops / peer_us / 1e6)
    return row


def prefill_call(batch: int, new: int, cached: int, tiles: dict):
    q, cache, meta = paged_batch(batch, cached + new, new)
    out = torch.empty_like(q)
    return lambda: prefill_attention(q, cache, out, meta["query_start_loc"], meta["seq_lens"], meta["block_tables"],
                                     HEAD_DIM ** -0.5, None, max_query_len=new, **tiles)


def elementwise(tokens: int = 8192) -> list[dict]:
    hidden, inter = 4096, 14336
    x, res = (torch.randn(tokens, hidden, device="cuda", dtype=DTYPE) for _ in range(2))
    norm = RMSNorm(hidden, 1e-5).to("cuda", DTYPE)
    gu = torch.randn(tokens, 2 * inter, device="cuda", dtype=DTYPE)
    rot = RotaryEmbedding(HEAD_DIM, 8192, 500000.0)
    rot.reset_cache("cuda")
    pos = torch.randint(0, 8192, (tokens,), device="cuda")
    qk = torch.randn(tokens, HEADS + KV_HEADS, HEAD_DIM, device="cuda", dtype=DTYPE)
    q, k = qk[:, :HEADS], qk[:, HEADS:]
    cases = {  # name: (triton fn, torch fn, bytes the op must move)
        "fused_add_rmsnorm": (lambda: fused_add_rmsnorm(x, res, norm.weight, 1e-5), lambda: norm(x, res),
                              4 * x.numel() * 2),
        "silu_and_mul": (lambda: silu_and_mul(gu), lambda: torch_silu_and_mul(gu), gu.numel() * 2 * 3 // 2),
        "rotary": (lambda: apply_rotary(pos, q, k, rot.cos, rot.sin), lambda: rot(pos, q, k), 2 * qk.numel() * 2),
    }
    rows = []
    for name, (fast, ref, nbytes) in cases.items():
        us, ref_us = gpu_us([fast]), gpu_us([ref])
        rows.append({"op": name, "tokens": tokens, "gpu_us": us, "host_us": host_us(fast), "gbps": nbytes / us / 1e3,
                     "torch_gpu_us": ref_us, "torch_gbps": nbytes / ref_us / 1e3})
    return rows


def backend_host_us(batch: int = 64, context: int = 2048) -> dict:
    """Host time of one layer's TritonAttentionBackend.forward in an eager decode step."""
    from ingot.attention import AttentionMetadata, get_backend

    q, cache, meta = paged_batch(batch, context, 1)
    k, v = (torch.randn(batch, KV_HEADS, HEAD_DIM, device="cuda", dtype=DTYPE) for _ in range(2))
    md = AttentionMetadata(**meta, slot_mapping=torch.arange(batch, device="cuda") * TPB,
                           query_start_loc_cpu=list(range(batch + 1)), seq_lens_cpu=[context] * batch,
                           max_query_len=1, max_seq_len=context)
    backend = get_backend("triton")
    return {"batch": batch, "context": context,
            "host_us": host_us(lambda: backend.forward(q, k, v, cache, md, HEAD_DIM ** -0.5, None))}


def sweeps(out: dict) -> None:
    """A few tile configurations and split counts, to choose the launchers' defaults."""
    decode_cfgs = [dict(block_n=n, num_warps=w, num_stages=st) for n, w, st in
                   [(32, 4, 3), (64, 4, 2), (64, 4, 3), (64, 4, 4), (128, 4, 3), (64, 8, 3), (128, 8, 3)]]
    prefill_cfgs = [dict(block_m=m, block_n=n, num_warps=w, num_stages=st) for m, n, w, st in
                    [(128, 64, 8, 2), (128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3), (128, 32, 4, 3),
                     (64, 128, 4, 2)]]
    shapes = [(1, 2048), (1, 8192), (64, 8192), (256, 2048)]
    out["prefill"] = [prefill_case(b, 2048, 0, peer=False, **cfg) for b in (1, 4) for cfg in prefill_cfgs]
    out["decode_splits"] = [decode_case(b, c, peer=False, num_splits=n)
                            for b, c, n in [(1, c, n) for c in (2048, 8192) for n in (4, 8, 16, 32, 64)]
                            + [(8, c, n) for c in (2048, 8192) for n in (1, 2, 4, 8, 16)]]
    out["decode_tiles"] = [decode_case(b, c, peer=False, **cfg) for b, c in shapes for cfg in decode_cfgs]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--commit", default="unknown")
    ap.add_argument("--sweep", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    name = torch.cuda.get_device_name()
    result = {"device": name, "commit": args.commit, "command": " ".join(["python"] + sys.argv),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "dtype": "bf16", "model": "llama-3.1-8b attention shapes (32/8 heads, head_dim 128)",
              "tokens_per_block": TPB, "torch": torch.__version__, **ceilings()}
    print(json.dumps({k: result[k] for k in ("device", "copy_tbps", "matmul_tflops")}), flush=True)
    try:
        run_all(result, args.sweep)
    finally:  # whatever was measured is kept, also when a later case fails
        slug = name.lower().replace("nvidia ", "").split()[0]
        what = "kernels-sweep" if args.sweep else "kernels"
        path = pathlib.Path(args.out) / f"{result['date'][:10]}-{slug}-{what}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")
        print("wrote", path)


def run_all(result: dict, sweep: bool) -> None:
    result["decode"] = []
    for batch, context, query_len in [(b, c, 1) for b in (1, 64, 256) for c in (128, 2048, 8192)] + [(64, 2048, 4)]:
        row = decode_case(batch, context, query_len)
        row["copy_fraction"] = row["gbps"] / (result["copy_tbps"] * 1e3)
        result["decode"].append(row)
        print(json.dumps(row), flush=True)
    result["prefill"] = []
    for batch, new, cached in [(1, 2048, 0), (4, 2048, 0), (1, 2048, 6144)]:
        row = prefill_case(batch, new, cached)
        row["matmul_fraction"] = row["tflops"] / result["matmul_tflops"]
        result["prefill"].append(row)
        print(json.dumps(row), flush=True)
    result["backend_forward_host"] = backend_host_us()
    small = torch.zeros(16, device="cuda")
    result["torch_op_host_us"] = host_us(lambda: small.add_(1))  # the host cost of one plain torch launch
    result["elementwise"] = elementwise()
    print(json.dumps([result["backend_forward_host"]] + result["elementwise"]), flush=True)
    if sweep:
        result["sweep"] = {}
        sweeps(result["sweep"])


if __name__ == "__main__":
    main()
