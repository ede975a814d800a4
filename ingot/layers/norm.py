"""RMSNorm, optionally fused with the residual add that precedes it, and with the FP8
quantization of its output when the linear layer it feeds takes FP8 input."""

from __future__ import annotations

import torch
from torch import nn

from ingot.quantization.fp8_format import Fp8Activation


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, computed in fp32 as transformers does.

    With `residual`, first forms x + residual (the new residual stream) and normalises that;
    returns (normed, new_residual) so the decoder layer never materialises the sum twice.

    A norm told which linear layer it `feeds` hands that layer, on the GPU, an Fp8Activation
    when the layer's method takes FP8 input (ingot/quantization/fp8_method.py): the Triton kernel
    quantizes the row it has just normalised, as TensorRT-LLM fuses RMSNorm and quantization.
    """

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps
        self._consumer: tuple[nn.Module, ...] = ()  # a tuple: the linear is not this module's child

    def feeds(self, linear: nn.Module) -> None:
        self._consumer = (linear,)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        if x.is_cuda:  # the fused Triton kernel: one pass over x and residual
            if self._takes_fp8():
                return self._forward_fp8(x, residual)
            from ingot.kernels import fused_add_rmsnorm, rmsnorm

            if residual is None:
                return rmsnorm(x, self.weight, self.eps)
            return fused_add_rmsnorm(x, residual, self.weight, self.eps)
        if residual is None:
            return self._norm(x)
        residual = x + residual
        return self._norm(residual), residual

    def _takes_fp8(self) -> bool:
        return bool(self._consumer) and hasattr(self._consumer[0].method, "fp8_input_scale")

    def _forward_fp8(self, x: torch.Tensor, residual: torch.Tensor | None):
        from ingot.kernels.rmsnorm import fused_add_rmsnorm_fp8, rmsnorm_fp8

        linear = self._consumer[0]
        static_scale = linear.method.fp8_input_scale(linear)
        if residual is None:
            return Fp8Activation(*rmsnorm_fp8(x, self.weight, self.eps, static_scale))
        values, scale, residual = fused_add_rmsnorm_fp8(x, residual, self.weight, self.eps, static_scale)
        return Fp8Activation(values, scale), residual
