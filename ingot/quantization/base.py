"""The contract every precision implements: a scheme for the model, a method per linear layer.

Quantization has two halves (STYLE rule 11):
  * offline, in the builder: `QuantScheme.quantize` turns full-precision engine tensors into the
    stored ones (quantized weights, scales, zero points), one stage of the build pipeline;
  * at run time: each linear layer holds a `LinearMethod` that creates those parameters,
    transforms them once after loading, and computes the layer's matmul.

Model code never branches on precision: it builds linear layers, and each layer asks the
scheme for its method by the layer's name (`linear_method(prefix)`), e.g. "layers.3.mlp.down_proj"
or "lm_head" (which a scheme may keep in the model dtype).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

Tensors = Iterator[tuple[str, torch.Tensor]]


class LinearMethod(ABC):
    """Owns one linear layer's parameters and its matmul; one instance per layer.

    create_weights(layer, in_features, out_features, dtype)
        Register the layer's parameters (this rank's slice: in/out features are per rank), in
        the layout engine files store, each marked with `mark_dims` so the builder can shard it
        and the loader can check it. The layer adds the bias itself.
    process_after_load(layer)
        Once, after the weights are filled (repack for a kernel, fold scales). Default: nothing.
    apply(layer, x, bias) -> (num_tokens, out_features)
        x @ W^T + bias for this rank's slice; a row-parallel layer sums the ranks' results itself.
    set_tactics(table)
        The build-time GEMM table for this layer's shape: {str(token bucket): tactic}, or None.
    """

    @abstractmethod
    def create_weights(self, layer: nn.Module, in_features: int, out_features: int, dtype: torch.dtype) -> None:
        ...

    def process_after_load(self, layer: nn.Module) -> None:
        return None

    @abstractmethod
    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ...

    def set_tactics(self, table: dict[str, str] | None) -> None:
        return None


class QuantScheme(ABC):
    """A precision for the whole model, made from its QuantConfig (method name + params)."""

    name: str = "base"

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        self.params = dict(params or {})

    @abstractmethod
    def linear_method(self, prefix: str) -> LinearMethod:
        """The method for the linear layer named `prefix` (a fresh object: methods hold per-layer state)."""

    def quantize(self, tensors: Tensors, context=None) -> Tensors:
        """Builder stage: full-precision engine tensors in, stored tensors out. Default: unchanged.
        `context` (ingot/quantization/calibration.py) gives methods that calibrate the model, the
        calibration text and the build device."""
        return tensors

    def check_layout(self, model, tp: int) -> None:
        """Refuse (ConfigError naming the numbers) a tensor-parallel split the stored layout cannot take."""
        return None

    def describe(self) -> str:
        """One line for `ingot inspect`."""
        return self.name


def mark_dims(param: nn.Parameter, output_dim: int | None = None, input_dim: int | None = None) -> nn.Parameter:
    """Say which dimension of a parameter runs along the layer's output features and which
    along its input features (None: neither, e.g. a per-tensor scale, which every rank keeps
    whole). Sharding reads these marks; see ingot/layers/linear.py."""
    param.output_dim = output_dim
    param.input_dim = input_dim
    return param
