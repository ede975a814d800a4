"""A layer's tuned GEMM table at run time: which implementation runs at which batch size.

The builder (ingot/tactics/gemm_tuning.py) stores, for every GEMM of the model, the winner at
each token-count bucket; a linear method resolves its table once at load into callables.

    table = {"1": "triton:16x32x256:w4:s4", ..., "2048": "cublas"}
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ingot.tactics.candidates import CUBLAS, GEMV_MAX_M, LinearFn, linear_fn


def pick(table: dict[str, str], m: int) -> str:
    """The tactic for a runtime M: that of the smallest bucket >= m, else of the largest.
    An empty table (nothing tuned) means cuBLAS."""
    if not table:
        return CUBLAS
    buckets = sorted(int(b) for b in table)
    bucket = next((b for b in buckets if b >= m), buckets[-1])
    return table[str(bucket)]


class TacticTable:
    """Token-count bucket -> GEMM function, resolved once at load time."""

    def __init__(self, table: dict[str, str]) -> None:
        self.table = table
        self.buckets = sorted(int(m) for m in table)
        self._fns: dict[int, LinearFn] = {m: linear_fn(pick(table, m)) for m in self.buckets}
        self._gemv = {m: _gemv_config(pick(table, m)) for m in self.buckets}

    def fn_for(self, num_tokens: int) -> LinearFn:
        for bucket in self.buckets:  # a handful of buckets: a scan beats a bisect call here
            if num_tokens <= bucket:
                return self._fns[bucket]
        return self._fns[self.buckets[-1]]


    def gemv_config_for(self, num_tokens: int):
        """The GemvConfig when this token count runs the GEMV kernel (steps of <= 4 tokens), else None."""
        if num_tokens > self.buckets[-1]:
            return None
        bucket = next(b for b in self.buckets if num_tokens <= b)
        return self._gemv[bucket] if num_tokens <= GEMV_MAX_M else None


def _gemv_config(tactic: str):
    if not tactic.startswith("gemv:"):
        return None
    from ingot.kernels.gemv import GemvConfig

    return GemvConfig.parse(tactic)


def dense_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 tactics: TacticTable | None = None) -> torch.Tensor:
    """x @ weight^T + bias with the tuned kernel for x's token count (F.linear when untuned)."""
    if tactics is None:
        return F.linear(x, weight, bias)
    return tactics.fn_for(x.shape[0])(x, weight, bias)
