"""Linear layers. Quantized and tensor-parallel variants will sit beside this one.

Weights are stored (out_features, in_features), as torch and the engine files keep them.
On CUDA an engine may carry build-time tactics: for each token-count bucket, the GEMM
implementation that measured fastest on the target GPU (see ingot/builder/tuning.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

LinearFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


class TacticTable:
    """Token-count bucket -> GEMM function, resolved once at load time."""

    def __init__(self, table: dict[str, str]) -> None:
        from ingot.tactics import linear_fn, pick

        self.table = table
        self.buckets = sorted(int(m) for m in table)
        self._fns: dict[int, LinearFn] = {m: linear_fn(pick(table, m)) for m in self.buckets}
        self._pick = pick

    def fn_for(self, num_tokens: int) -> LinearFn:
        for bucket in self.buckets:  # a handful of buckets: a scan beats a bisect call here
            if num_tokens <= bucket:
                return self._fns[bucket]
        return self._fns[self.buckets[-1]]


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
           tactics: TacticTable | None = None) -> torch.Tensor:
    if tactics is None:
        return F.linear(x, weight, bias)
    return tactics.fn_for(x.shape[0])(x, weight, bias)


class Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.tactics: TacticTable | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self.tactics)
