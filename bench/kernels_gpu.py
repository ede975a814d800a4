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


def decode_ms(batch: int, context: int, query_len: int, tiles: dict) -> float:
    q, cache, meta = paged_batch(batch, context, query_len)
    out = torch.empty_like(q)
    return bench_ms(lambda: decode_attention(q, cache, out, meta["query_start_loc"], meta["seq_lens"],
                                             meta["block_tables"], HEAD_DIM ** -0.5, None,
                                             max_query_len=query_len, **tiles))


def decode_case(batch: int, context: int, query_len: int = 1, **tiles) -> dict:
    ms = decode_ms(batch, context, query_len, tiles)  # the paged cache is freed on return
    kv_bytes = 2 * batch * context * KV_HEADS * HEAD_DIM * 2
    row = {"batch": batch, "context": context, "query_len": query_len, "us": ms * 1e3,
           "kv_gbytes": kv_bytes / 1e9, "gbps": kv_bytes / ms / 1e6, **tiles}
    if query_len == 1 and not tiles:
        row.update(sdpa_decode(batch, context, query_len, kv_bytes))
    return row


def sdpa_ms(q, k, v, causal: bool) -> tuple[float, str]:
    """torch SDPA (B, H, S, D) with GQA, flash if it takes the shape, else whatever torch picks."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def run():
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)

    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return bench_ms(run), "flash"
    except RuntimeError:
        return bench_ms(run), "default"


def sdpa_decode(batch: int, context: int, query_len: int, kv_bytes: int) -> dict:
    """Peer: torch SDPA over a dense (B, Hkv, ctx, D) cache (no paging), without copying KV."""
    q = torch.randn(batch, HEADS, query_len, HEAD_DIM, device="cuda", dtype=DTYPE)
    k, v = (torch.randn(batch, KV_HEADS, context, HEAD_DIM, device="cuda", dtype=DTYPE) for _ in range(2))
    ms, backend = sdpa_ms(q, k, v, causal=False)  # one query row per sequence (query_len 1)
    return {"sdpa_us": ms * 1e3, "sdpa_gbps": kv_bytes / ms / 1e6, "sdpa_backend": backend}


def prefill_case(batch: int, new: int, cached: int, **tiles) -> dict:
    q, cache, meta = paged_batch(batch, cached + new, new)
    out = torch.empty_like(q)
    ms = bench_ms(lambda: prefill_attention(q, cache, out, meta["query_start_loc"], meta["seq_lens"],
                                            meta["block_tables"], HEAD_DIM ** -0.5, None,
                                            max_query_len=new, **tiles))
    # causal: each new token i attends cached + i + 1 keys; 2 matmuls x 2 flops per MAC
    pairs = batch * sum(cached + i + 1 for i in range(new))
    flops = 4 * pairs * HEADS * HEAD_DIM
    row = {"batch": batch, "new_tokens": new, "cached": cached, "us": ms * 1e3, "tflops": flops / ms / 1e9, **tiles}
    if cached == 0:
        qd = torch.randn(batch, HEADS, new, HEAD_DIM, device="cuda", dtype=DTYPE)
        k, v = (torch.randn(batch, KV_HEADS, new, HEAD_DIM, device="cuda", dtype=DTYPE) for _ in range(2))
        ms_peer, backend = sdpa_ms(qd, k, v, causal=True)
        row.update(sdpa_us=ms_peer * 1e3, sdpa_tflops=flops / ms_peer / 1e9, sdpa_backend=backend)
    return row


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
        ms, ref_ms = bench_ms(fast), bench_ms(ref)
        rows.append({"op": name, "tokens": tokens, "us": ms * 1e3, "gbps": nbytes / ms / 1e6,
                     "torch_us": ref_ms * 1e3, "torch_gbps": nbytes / ref_ms / 1e6})
    return rows


def sweeps() -> dict:
    decode_cfgs = [dict(block_n=n, num_warps=w, num_stages=s) for n, w, s in
                   [(32, 4, 3), (64, 4, 2), (64, 4, 3), (64, 4, 4), (128, 4, 3), (64, 8, 3), (128, 8, 3)]]
    prefill_cfgs = [dict(block_m=m, block_n=n, num_warps=w, num_stages=s) for m, n, w, s in
                    [(128, 64, 8, 2), (128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3), (128, 32, 4, 3),
                     (64, 128, 4, 2)]]
    return {
        "decode": [decode_case(b, c, **cfg) for b, c in [(1, 8192), (64, 8192)] for cfg in decode_cfgs],
        "prefill": [prefill_case(1, 2048, 0, **cfg) for cfg in prefill_cfgs],
    }


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
    result["decode"] = [decode_case(b, c) for b in (1, 64, 256) for c in (128, 2048, 8192)]
    result["decode"] += [decode_case(64, 2048, query_len=4)]
    for row in result["decode"]:
        row["copy_fraction"] = row["gbps"] / (result["copy_tbps"] * 1e3)
        print(json.dumps(row), flush=True)
    result["prefill"] = [prefill_case(1, 2048, 0), prefill_case(4, 2048, 0), prefill_case(1, 2048, 6144)]
    for row in result["prefill"]:
        row["matmul_fraction"] = row["tflops"] / result["matmul_tflops"]
        print(json.dumps(row), flush=True)
    result["elementwise"] = elementwise()
    print(json.dumps(result["elementwise"]), flush=True)
    if args.sweep:
        result["sweep"] = sweeps()
        print(json.dumps(result["sweep"]), flush=True)
    slug = name.lower().replace("nvidia ", "").split()[0]
    path = pathlib.Path(args.out) / f"{result['date'][:10]}-{slug}-kernels.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", path)


if __name__ == "__main__":
    main()
