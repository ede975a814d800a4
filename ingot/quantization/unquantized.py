"""Weights stored in the model dtype (fp32, fp16, bf16): the first method, and the reference."""

from __future__ import annotations

import torch
from torch import nn

from ingot.quantization.base import LinearMethod, QuantScheme, mark_dims
from ingot.tactics.table import TacticTable, dense_linear


class UnquantizedLinearMethod(LinearMethod):
    """W (out_features, in_features) in the model dtype; the GEMM is cuBLAS or a Triton
    configuration, picked per token-count bucket at build time (ingot/tactics)."""

    def __init__(self) -> None:
        self.tactics: TacticTable | None = None

    def create_weights(self, layer: nn.Module, in_features: int, out_features: int, dtype: torch.dtype) -> None:
        weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype), requires_grad=False)
        layer.weight = mark_dims(weight, output_dim=0, input_dim=1)

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return dense_linear(x, layer.weight, bias, self.tactics)

    def set_tactics(self, table: dict[str, str] | None) -> None:
        self.tactics = TacticTable(table) if table else None

    def gemv_config(self, num_tokens: int):
        """The GEMV config this layer runs at num_tokens (ingot/layers/fused.py folds the norm or
        activation before it into its prologue), or None."""
        return self.tactics.gemv_config_for(num_tokens) if self.tactics is not None else None


class Unquantized(QuantScheme):
    name = "none"

    def linear_method(self, prefix: str) -> LinearMethod:
        return UnquantizedLinearMethod()

    def describe(self) -> str:
        return "none: every weight in the model dtype"
