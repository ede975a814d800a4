"""Tactic names and what they run.

A tactic is a string stored in the engine: "cublas" (torch.nn.functional.linear, which calls
cuBLAS/cuBLASLt on CUDA), "triton:BMxBNxBK:wW:sS" (a configuration of ingot/kernels/gemm.py) or,
for steps of at most 4 tokens, "gemv:BNxBK:wW:sS" (ingot/kernels/gemv.py).
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F

CUBLAS = "cublas"
# x (M, K), weight (N, K), bias (N,) or None -> (M, N)
LinearFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]

# Default Triton candidates by batch tier (tokens per step), for bf16/fp16 on Hopper:
#  - decode (M <= 16) is a weight stream: BM=16 (tl.dot's minimum), narrow BN so that
#    N/BN >= the 132 multiprocessors, long BK and deep pipelines to keep bytes in flight;
#  - mid batches grow BM with M so the tile is not mostly padding;
#  - prefill is compute-bound: 128-row tiles, 8 warps (two warpgroups of wgmma).
# Tiers share configs so that a build compiles 9 kernels in all (in parallel threads: ~4 s on H200).
_TIERS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (16, ("triton:16x32x256:w4:s4", "triton:16x64x128:w4:s5")),
    (32, ("triton:32x64x128:w4:s4", "triton:16x64x128:w4:s5", "triton:32x32x128:w4:s4")),
    (64, ("triton:64x64x128:w4:s4", "triton:32x64x128:w4:s4", "triton:32x32x128:w4:s4")),
    # 64x64 too: down_proj (N=4096) at M=128 has only 64 tiles of 64x128 for 132 SMs.
    (256, ("triton:64x64x128:w4:s4", "triton:64x128x64:w4:s4", "triton:128x128x64:w4:s4")),
    (1 << 62, ("triton:128x128x64:w8:s4", "triton:128x256x64:w8:s3", "triton:128x128x64:w4:s4")),
)


# Weight-streaming GEMV configs for 1-4 tokens: BN whole columns per program (N / BN programs,
# >= 256 for every 8B-shape GEMM), BK x BN bf16 strips of 4-16 KB per load.
GEMV_MAX_M = 4
_GEMV = ("gemv:16x256:w4:s3", "gemv:8x512:w4:s3", "gemv:32x256:w8:s3", "gemv:4x1024:w4:s4")


def default_candidates(m: int) -> list[str]:
    """cuBLAS first (the safe answer if the time budget runs out), then this M's Triton configs."""
    for limit, configs in _TIERS:
        if m <= limit:
            return [CUBLAS, *configs, *(_GEMV if m <= GEMV_MAX_M else ())]
    raise AssertionError("unreachable: the last tier has no limit")


def all_default_triton() -> list[str]:
    return sorted({c for _, configs in _TIERS for c in configs})


def validate(tactic: str) -> str:
    """The tactic itself, or a ValueError that says what a tactic looks like."""
    linear_fn(tactic)
    return tactic


@functools.lru_cache(maxsize=None)
def linear_fn(tactic: str) -> LinearFn:
    """x (M, K), weight (N, K), bias (N,) or None -> (M, N). Cached: the runtime calls this per layer."""
    if tactic == CUBLAS:
        return F.linear
    if tactic.startswith("triton:"):
        from ingot.kernels.gemm import GemmConfig, gemm  # imports triton: only when a Triton tactic is used

        config = GemmConfig.parse(tactic)
        return functools.partial(_triton_linear, gemm, config)
    if tactic.startswith("gemv:"):
        from ingot.kernels.gemv import GemvConfig, gemv

        return functools.partial(_gemv_linear, gemv, GemvConfig.parse(tactic))
    raise ValueError(f"unknown GEMM tactic {tactic!r}: expected 'cublas', 'triton:BMxBNxBK:wW:sS' "
                     "or 'gemv:BNxBK:wW:sS'")


def _triton_linear(gemm, config, x, weight, bias=None):
    return gemm(x, weight, bias, config=config)


def _gemv_linear(gemv, config, x, weight, bias=None):
    # the table gives a GEMV tactic only to buckets of <= 4 tokens; a larger step (beyond every
    # bucket) takes cuBLAS rather than a kernel made for a weight stream
    if x.shape[0] > GEMV_MAX_M:
        return F.linear(x, weight, bias)
    return gemv(x, weight, bias, config=config)
