"""Build-time kernels for the FP8 W8A8 GEMMs (ingot/quantization/fp8_method.py).

For every block linear of an FP8 engine (qkv, o, gate_up, down; the lm_head stays in the model
dtype and is tuned as a dense GEMM) and every token-count bucket, the candidates are timed on
random E4M3 weights of the real shape with the engine's scale kinds, as the dense tactics are
(ingot/tactics/timing.py). The table stored in engine.json:

    {"qkv_proj": {"1": "gemv:16x512:w4:s3", "64": "triton:64x64x256:w4:s4", "2048": "scaled_mm"}}

    scaled_mm                 torch._scaled_mm (cuBLASLt's FP8 GEMM)
    triton:BMxBNxBK:wW:sS     ingot/kernels/gemm.py's gemm_fp8 (tl.dot on E4M3 tiles)
    gemv:BNxBK:wW:sS          ingot/kernels/gemv.py's gemv_fp8, for steps of <= 4 tokens

A tactic that cannot run a case (scaled_mm on a GPU without FP8 tensor cores, inner sizes not
multiples of 16) falls back to gemm_fp8's default tiles, so every tactic computes every case.
"""

from __future__ import annotations

import functools
import logging
from typing import Callable

import torch

from ingot.tactics.tune import Table, Timings, run_tuning

SCALED_MM = "scaled_mm"
FP8_GEMMS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
GEMV_MAX_M = 4
# fn(x_q, x_scale, w_q, w_scale, bias, out_dtype) -> (M, N)
Fp8LinearFn = Callable[..., torch.Tensor]

# E4M3 tiles hold twice the K of bf16 ones in the same shared memory; BK >= 32 for wgmma.
_TIERS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (16, ("triton:16x64x256:w4:s4", "triton:16x32x512:w4:s4")),
    (32, ("triton:32x64x256:w4:s4", "triton:16x64x256:w4:s4")),
    (64, ("triton:64x64x256:w4:s4", "triton:32x64x256:w4:s4")),
    (256, ("triton:64x128x128:w4:s4", "triton:128x128x128:w8:s3", "triton:64x64x256:w4:s4")),
    (1 << 62, ("triton:128x256x128:w8:s3", "triton:128x128x128:w8:s4", "triton:128x256x64:w8:s4")),
)
_GEMV = ("gemv:16x512:w4:s3", "gemv:8x1024:w4:s3", "gemv:32x512:w8:s3", "gemv:16x1024:w8:s4")


def fp8_candidates(m: int) -> list[str]:
    """cuBLASLt first (the answer if the time budget runs out), then this M's Triton configs."""
    for limit, configs in _TIERS:
        if m <= limit:
            return [SCALED_MM, *configs, *(_GEMV if m <= GEMV_MAX_M else ())]
    raise AssertionError("unreachable: the last tier has no limit")


@functools.lru_cache(maxsize=None)
def fp8_linear_fn(tactic: str) -> Fp8LinearFn:
    """fn(x_q, x_scale, w_q, w_scale, bias, out_dtype) for an FP8 tactic; cached per name."""
    if tactic == SCALED_MM:
        return _scaled_mm_or_triton
    if tactic.startswith("triton:"):
        from ingot.kernels.gemm import GemmConfig, gemm_fp8

        return functools.partial(_with_config, gemm_fp8, GemmConfig.parse(tactic))
    if tactic.startswith("gemv:"):
        from ingot.kernels.gemv import GemvConfig, gemv_fp8

        return functools.partial(_gemv, gemv_fp8, GemvConfig.parse(tactic))
    raise ValueError(f"unknown FP8 GEMM tactic {tactic!r}: expected '{SCALED_MM}', "
                     "'triton:BMxBNxBK:wW:sS' or 'gemv:BNxBK:wW:sS'")


def _scaled_mm_or_triton(x_q, x_scale, w_q, w_scale, bias, out_dtype):
    from ingot.quantization.fp8_cuda import scaled_mm

    y = scaled_mm(x_q, x_scale, w_q, w_scale, bias, out_dtype)
    if y is not None:
        return y
    from ingot.kernels.gemm import gemm_fp8

    return gemm_fp8(x_q, x_scale, w_q, w_scale, bias, out_dtype)


def _with_config(kernel, config, x_q, x_scale, w_q, w_scale, bias, out_dtype):
    return kernel(x_q, x_scale, w_q, w_scale, bias, out_dtype, config)


def _gemv(kernel, config, x_q, x_scale, w_q, w_scale, bias, out_dtype):
    # a GEMV tactic covers buckets of <= 4 tokens only; a larger step takes cuBLASLt
    if x_q.shape[0] > GEMV_MAX_M:
        return _scaled_mm_or_triton(x_q, x_scale, w_q, w_scale, bias, out_dtype)
    return kernel(x_q, x_scale, w_q, w_scale, bias, out_dtype, config)


def tune_fp8_gemms(shapes: dict[str, tuple[int, int]], per_channel: bool, dtype: torch.dtype, buckets: list[int],
                   time_budget_s: float) -> tuple[Table, Timings]:
    """{name: {str(M): tactic}} and the timings (us) for the FP8 GEMMs of `shapes` (name -> (N, K))."""
    from ingot.tactics.timing import Fp8Bench

    benches: dict[str, Fp8Bench] = {}
    current: dict[str, int] = {}

    def measure(name: str, m: int, tactic: str) -> float:
        if name not in benches:
            benches.clear()
            benches[name] = Fp8Bench(*shapes[name], per_channel, dtype, torch.device("cuda"))
            _precompile(benches[name], per_channel)
        if current.get(name) != m:
            benches[name].set_batch(m)
            current[name] = m
        fn = fp8_linear_fn(tactic)
        return benches[name].time_us(lambda x, w, bias: fn(x[0], x[1], w[0], w[1], bias, dtype))

    try:
        return run_tuning(list(shapes), buckets, fp8_candidates, measure, time_budget_s)
    finally:
        benches.clear()
        torch.cuda.empty_cache()
        logging.getLogger(__name__).info("tuned FP8 GEMM kernels for %s", list(shapes))


def _precompile(bench, per_channel: bool) -> None:
    """Compile this shape's Triton configs in parallel threads before they are timed one by one."""
    from ingot.kernels.gemm import GemmConfig, precompile

    configs = sorted({c for _, tier in _TIERS for c in tier})
    kind = 2 if per_channel else 1
    try:
        precompile([GemmConfig.parse(c) for c in configs], bench.weights[0][0], fp8_scales=(kind, kind))
    except Exception as exc:  # only an optimisation: the first timed call compiles instead
        logging.getLogger(__name__).warning("parallel Triton precompile failed (%s); compiling serially", exc)
