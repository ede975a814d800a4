"""Tune Llama-3.1-8B's GEMMs on this GPU and record cuBLAS vs the best Triton config per shape,
with the card's ceilings (device-to-device copy bandwidth, 8192^3 bf16 matmul rate) from the
same run.

    TRITON_CACHE_DIR=$(mktemp -d) PYTHONPATH=. python bench/gemm_tactics.py --commit HASH --out FILE.json

A fresh TRITON_CACHE_DIR makes the first tuning pay for its compiles, as a first build on a new
machine does; the second tuning (same process, compiled kernels cached) is what a rebuild costs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time

import torch
from benchlib import median_cuda_seconds

from ingot.config import ModelConfig
from ingot.tactics.gemm_tuning import GEMM_NAMES, gemm_shapes, tune_gemms_with_timings

LLAMA_8B = ModelConfig(architecture="LlamaForCausalLM", vocab_size=128256, hidden_size=4096,
                       intermediate_size=14336, num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128,
                       rope_theta=500000.0)
BUCKETS = [1, 8, 32, 64, 128, 256, 512, 2048]


def _median_ms(fn, reps: int = 20) -> float:
    return median_cuda_seconds(fn, reps, warmup=5) * 1e3  # 5 warm-ups: clocks up, caches warm


def ceilings() -> dict:
    """Copy bandwidth (bytes read + written) over 1 GiB, and the 8192^3 bf16 matmul rate on random data."""
    src = torch.randn(1 << 28, device="cuda")  # 1 GiB of fp32
    dst = torch.empty_like(src)
    copy_ms = _median_ms(lambda: dst.copy_(src))
    del src, dst
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    mm_ms = _median_ms(lambda: a @ b)
    return {"copy_tbps": round(2 * (1 << 30) / copy_ms / 1e9, 3),
            "matmul_tflops": round(2 * 8192 ** 3 / mm_ms / 1e9, 1)}


def host_launch_us(calls: int = 200) -> dict:
    """Host time per call at M=1 on o_proj's shape: what an eager (not graphed) step pays per GEMM."""
    from ingot.tactics import linear_fn

    x = torch.randn(1, 4096, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    result = {}
    for tactic in ("cublas", "triton:16x32x256:w4:s4"):
        fn = linear_fn(tactic)
        fn(x, w, None)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            fn(x, w, None)
        result[tactic] = round((time.perf_counter() - start) * 1e6 / calls, 1)
        torch.cuda.synchronize()
    return result


def rows(timings: dict, table: dict) -> list[dict]:
    """One row per (name, M): cuBLAS and best Triton in µs, and the winner's TFLOP/s and GB/s
    (bytes: x, w and out each moved once, the floor a perfect kernel would move)."""
    out = []
    for name, (n, k) in gemm_shapes(LLAMA_8B).items():
        for m_key, measured in timings[name].items():
            m = int(m_key)
            triton = {t: us for t, us in measured.items() if t.startswith("triton:")}
            best = min(triton, key=triton.get) if triton else None
            win_us = measured[table[name][m_key]] if measured else None
            flops, nbytes = 2 * m * n * k, 2 * (m * k + n * k + m * n)
            out.append({
                "name": name, "M": m, "N": n, "K": k, "cublas_us": _r(measured.get("cublas")),
                "best_triton": best, "best_triton_us": _r(triton.get(best)), "winner": table[name][m_key],
                "winner_tflops": _r(flops / win_us / 1e6) if win_us else None,
                "winner_gbps": _r(nbytes / win_us / 1e3) if win_us else None,
                "triton_over_cublas": _r(triton[best] / measured["cublas"]) if best and "cublas" in measured else None,
            })
    return out


def _r(v):
    return round(v, 2) if isinstance(v, float) else v


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--commit", default="unknown")
    parser.add_argument("--out", required=True)
    parser.add_argument("--budget", type=float, default=30.0)
    args = parser.parse_args()
    torch.cuda.init()
    started = time.monotonic()
    table, timings = tune_gemms_with_timings(LLAMA_8B, torch.bfloat16, BUCKETS, time_budget_s=args.budget)
    cold_s = time.monotonic() - started
    started = time.monotonic()
    table2, _ = tune_gemms_with_timings(LLAMA_8B, torch.bfloat16, BUCKETS, time_budget_s=args.budget)
    warm_s = time.monotonic() - started
    import triton

    record = {
        "device": torch.cuda.get_device_name(), "commit": args.commit,
        "command": "TRITON_CACHE_DIR=$(mktemp -d) PYTHONPATH=. python " + " ".join(sys.argv),
        "date": datetime.date.today().isoformat(), "model": "llama-3.1-8b (shapes, random weights)",
        "dtype": "bf16", "quant": None, "batch_buckets": BUCKETS,
        "torch": torch.__version__, "triton": triton.__version__,
        **ceilings(), "host_launch_us_m1": host_launch_us(),
        "tuning_s_cold_compile": round(cold_s, 2), "tuning_s_warm": round(warm_s, 2), "time_budget_s": args.budget,
        "winners_stable_between_runs": sum(table[n][m] == table2[n][m] for n in table for m in table[n]),
        "pairs": sum(len(v) for v in table.values()),
        "table": table, "rows": rows(timings, table), "timings_us": timings,
    }
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1)
    _print(record)


def _print(record: dict) -> None:
    print(f"{record['device']}  copy {record['copy_tbps']} TB/s  matmul {record['matmul_tflops']} TFLOP/s  "
          f"tuning {record['tuning_s_cold_compile']} s cold / {record['tuning_s_warm']} s warm  "
          f"host launch {record['host_launch_us_m1']}")
    print(f"{'name':13} {'M':>5} {'cublas':>9} {'triton':>9} {'ratio':>6} {'TFLOP/s':>8} {'GB/s':>7}  best triton")
    for r in record["rows"]:
        print(f"{r['name']:13} {r['M']:5} {r['cublas_us'] or '-':>9} {r['best_triton_us'] or '-':>9} "
              f"{r['triton_over_cublas'] or '-':>6} {r['winner_tflops'] or '-':>8} {r['winner_gbps'] or '-':>7}  "
              f"{r['best_triton']}")


if __name__ == "__main__":
    assert tuple(gemm_shapes(LLAMA_8B)) == GEMM_NAMES
    main()
