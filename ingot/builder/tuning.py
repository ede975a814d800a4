"""Build-time tactic tuning: which GEMM implementation runs each matmul at each batch size.

On a CUDA target every GEMM shape of the model is timed at each token-count bucket (the
CUDA-graph decode sizes and the prompt-chunk sizes) for every candidate (cuBLAS through torch,
Triton configurations); the winners are frozen into engine.json and used by the runtime.
On CPU there is a single implementation (torch's), so there is nothing to choose.
"""

from __future__ import annotations

import torch

from ingot.config import BuildConfig, ModelConfig

TUNING_BUDGET_S = 30.0


def token_buckets(build: BuildConfig) -> list[int]:
    """Token counts per step to tune for: decode batch sizes, then prompt-chunk sizes."""
    prefill = [n for n in (512, 1024, 2048, 4096, 8192) if n < build.max_num_tokens] + [build.max_num_tokens]
    return sorted(set(build.cuda_graph_batch_sizes) | set(prefill))


def tune_tactics(model: ModelConfig, build: BuildConfig, dtype: torch.dtype, target,
                 tp_size: int = 1, scheme=None) -> tuple[dict, dict]:
    """(tactics {gemm: {bucket: tactic}}, timings {gemm: {bucket: {tactic: us}}}) for one rank's
    GEMM shapes; empty on CPU. The block linears of a quantized engine get their method's kernels
    (INT4: W4A16 tiles, ingot/tactics/int4_tuning.py; FP8: ingot/tactics/fp8_tuning.py); the
    lm_head, kept in the model dtype, and every GEMM of an unquantized engine a dense tactic."""
    if target.kind != "cuda":
        return {}, {}
    from ingot.tactics.gemm_tuning import GEMM_NAMES, gemm_shapes, tune_gemms_with_timings

    buckets = token_buckets(build)
    quantized = _quantized_tuner(scheme)
    if quantized is None:
        return tune_gemms_with_timings(model, dtype, buckets, device="cuda", time_budget_s=TUNING_BUDGET_S,
                                       tp_size=tp_size)
    names, tune = quantized
    shapes = {name: shape for name, shape in gemm_shapes(model, tp_size).items() if name in names}
    tactics, timings = tune(shapes, dtype, buckets, TUNING_BUDGET_S)
    dense = tuple(name for name in GEMM_NAMES if name not in names)
    dense_tactics, dense_timings = tune_gemms_with_timings(model, dtype, buckets, device="cuda",
                                                           time_budget_s=TUNING_BUDGET_S, tp_size=tp_size, names=dense)
    return {**tactics, **dense_tactics}, {**timings, **dense_timings}


def _quantized_tuner(scheme):
    """(GEMM names, tune(shapes, dtype, buckets, budget)) for a quantized scheme's own kernels, or None."""
    name = getattr(scheme, "name", "none")
    if name.startswith("int4"):
        from ingot.tactics.int4_tuning import INT4_GEMMS, tune_int4_gemms

        return INT4_GEMMS, lambda shapes, *args: tune_int4_gemms(shapes, scheme.group_size, *args)
    if name.startswith("fp8"):  # quantized at build, or a pre-quantized checkpoint's scales
        from ingot.tactics.fp8_tuning import FP8_GEMMS, tune_fp8_gemms

        per_channel = getattr(scheme, "scaling", "per_channel") == "per_channel"
        return FP8_GEMMS, lambda shapes, *args: tune_fp8_gemms(shapes, per_channel, *args)
    return None
