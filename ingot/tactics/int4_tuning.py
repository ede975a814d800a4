"""Build-time tiles for the INT4 weight-only GEMMs (ingot/kernels/w4a16.py).

For every block linear of an INT4 engine (qkv, o, gate_up, down; the lm_head stays in the model
dtype and is tuned as a dense GEMM) and every token-count bucket up to W4A16_MAX_TOKENS, the
candidates are timed on random INT4 weights of the real shape, as the dense tactics are
(ingot/tactics/timing.py: device time, launch cost kept out, weights rotated past L2); larger
buckets dequantize and call cuBLAS (prefill is compute-bound). The table stored in engine.json:

    {"qkv_proj": {"1": "w4a16:1x64x128:w2:s2:k8", "16": "w4a16:16x128x128:w4:s3:k8", ..., "128": "dequant"}}

The candidates are the winners of a wide sweep on an H200 (bench/w4a16_gpu.py, 2026-11-30 record),
a few per tier so that a build compiles about a dozen kernels.
"""

from __future__ import annotations

import logging

import torch

from ingot.tactics.candidates import CUBLAS
from ingot.tactics.tune import Table, Timings, run_tuning

DEQUANT = "dequant"  # dequantize the layer's weight, then cuBLAS
W4A16_MAX_TOKENS = 64
INT4_GEMMS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")

_GEMV = ("w4a16:1x64x128:w2:s2:k8", "w4a16:1x32x128:w2:s2:k8", "w4a16:1x32x128:w2:s3:k16",
         "w4a16:1x64x256:w4:s2:k8")


def int4_candidates(m: int) -> list[str]:
    """Tiles to time at M tokens: GEMV for a few rows, tl.dot tiles of block_m >= M up to 64."""
    if m > W4A16_MAX_TOKENS:
        return [DEQUANT]
    block_m = max(16, 1 << (m - 1).bit_length())
    dot = [f"w4a16:{block_m}x128x128:w4:s3:k8", f"w4a16:{block_m}x64x128:w4:s3:k8", f"w4a16:{block_m}x128x128:w4:s4:k4"]
    if m == 1:
        return [*_GEMV, dot[0]]
    return ([_GEMV[0]] if m <= 4 else []) + dot + ([DEQUANT] if m >= 32 else [])


def tune_int4_gemms(shapes: dict[str, tuple[int, int]], group_size: int, dtype: torch.dtype, buckets: list[int],
                    time_budget_s: float) -> tuple[Table, Timings]:
    """{name: {str(M): tactic}} and the timings (us) for the INT4 GEMMs of `shapes` (name -> (N, K))."""
    from ingot.tactics.timing import Int4Bench, int4_linear_fn

    benches: dict[str, Int4Bench] = {}
    current: dict[str, int] = {}

    def measure(name: str, m: int, tactic: str) -> float:
        if name not in benches:
            benches.clear()
            benches[name] = Int4Bench(*shapes[name], group_size, dtype, torch.device("cuda"))
        if current.get(name) != m:
            benches[name].set_batch(m)
            current[name] = m
        return benches[name].time_us(int4_linear_fn(tactic, group_size))

    try:
        table, timings = run_tuning(list(shapes), buckets, int4_candidates, measure, time_budget_s)
        # a bucket left unmeasured (budget spent) falls back to run_tuning's "cublas": dequantize, then cuBLAS
        return {name: {m: DEQUANT if t == CUBLAS else t for m, t in row.items()} for name, row in table.items()}, timings
    finally:
        benches.clear()
        torch.cuda.empty_cache()
        logging.getLogger(__name__).info("tuned INT4 GEMM tiles for %s", list(shapes))
