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
                 tp_size: int = 1) -> tuple[dict, dict]:
    """(tactics {gemm: {bucket: tactic}}, timings {gemm: {bucket: {tactic: us}}}) for one rank's
    GEMM shapes; empty on CPU."""
    if target.kind != "cuda":
        return {}, {}
    from ingot.tactics.gemm_tuning import tune_gemms_with_timings

    return tune_gemms_with_timings(model, dtype, token_buckets(build), device="cuda",
                                   time_budget_s=TUNING_BUDGET_S, tp_size=tp_size)
