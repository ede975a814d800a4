"""The runtime half of FP8 W8A8: a linear layer whose weight is stored as float8_e4m3fn with
float32 scales, and whose input is quantized to E4M3 on the way in.

    per_channel  weight_scale (out, 1): one per output channel; the input gets one scale per token,
                 computed on the fly from the token's largest magnitude (dynamic)
    per_tensor   weight_scale (1,) and input_scale (1,): one each, both fixed at build (static,
                 the input's calibrated on text)

    y = (x_q . w_q^T) * x_scale * w_scale^T + b        x_q (tokens, in), w_q (out, in) in E4M3

The scales multiply the fp32 product of the E4M3 values, which is where torch._scaled_mm applies
them; equal, up to fp32 rounding, to dequantizing both operands first. `fp8_linear_emulated`
is that formula in plain torch: the CPU runtime, and what GPU kernels are checked against.

On the GPU the input usually arrives already quantized (an Fp8Activation) from the RMSNorm or
SiLU·mul kernel before the layer, which fuse the quantization (ingot/layers/norm.py, fused.py ask
`fp8_input_scale` what to produce); the attention output is quantized here. The GEMM is the
build's tactic for the token count (ingot/tactics/fp8_tuning.py: cuBLASLt, Triton tiles, or a
GEMV for a few tokens), torch._scaled_mm in an engine built without a GPU table.
"""

from __future__ import annotations

import torch
from torch import nn

from ingot.quantization.base import LinearMethod, mark_dims
from ingot.quantization.fp8_format import FP8_DTYPE, Fp8Activation, quantize, quantize_per_row

_UNTUNED = "scaled_mm"  # the GEMM of an engine built without a GPU tactic table


def fp8_linear_emulated(x_q: torch.Tensor, x_scale: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor,
                        bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """x_q (M, K) E4M3, x_scale (M, 1) or (1,); w_q (N, K) E4M3 (or its values as fp32), w_scale
    (N, 1) or (1,); fp32 accumulation, result (M, N) in out_dtype."""
    y = (x_q.float() @ w_q.float().t()) * x_scale * w_scale.reshape(1, -1)
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)


class Fp8LinearMethod(LinearMethod):
    def __init__(self, per_channel: bool) -> None:
        self.per_channel = per_channel
        self.weight_values: torch.Tensor | None = None  # CPU: the E4M3 values as fp32 (out, in), made once
        self.tactics: list[tuple[int, object]] = []  # (token bucket, fn), ascending; empty: untuned
        self.out_dtype = torch.get_default_dtype()  # the model dtype, set by create_weights

    def create_weights(self, layer: nn.Module, in_features: int, out_features: int, dtype: torch.dtype) -> None:
        self.out_dtype = dtype

        def param(*shape, dtype=torch.float32):
            return nn.Parameter(torch.empty(*shape, dtype=dtype), requires_grad=False)

        layer.weight = mark_dims(param(out_features, in_features, dtype=FP8_DTYPE), output_dim=0, input_dim=1)
        if self.per_channel:
            layer.weight_scale = mark_dims(param(out_features, 1), output_dim=0)
        else:  # whole-tensor scales: every tensor-parallel rank keeps them as they are
            layer.weight_scale = mark_dims(param(1))
            layer.input_scale = mark_dims(param(1))

    def process_after_load(self, layer: nn.Module) -> None:
        if layer.weight.device.type == "cpu":  # CPU matmuls take no fp8: convert once, not every step
            self.weight_values = layer.weight.float()

    def fp8_input_scale(self, layer: nn.Module) -> torch.Tensor | None:
        """What a producer fusing the quantization must use: the static input scale ((1,) float32),
        or None for one scale per token."""
        return None if self.per_channel else layer.input_scale

    def quantize_input(self, layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_q (M, K) E4M3, x_scale (M, 1) or (1,) float32)."""
        if x.is_cuda:
            from ingot.kernels.fp8_quant import quantize_fp8

            return quantize_fp8(x.contiguous(), self.fp8_input_scale(layer))
        if self.per_channel:
            return quantize_per_row(x)
        return quantize(x, layer.input_scale), layer.input_scale

    def apply(self, layer: nn.Module, x: torch.Tensor | Fp8Activation, bias: torch.Tensor | None) -> torch.Tensor:
        if isinstance(x, Fp8Activation):  # quantized by the kernel that produced it
            (x_q, x_scale), shape, out_dtype = x, x.values.shape, self.out_dtype
        else:
            shape, out_dtype = x.shape, x.dtype
            x_q, x_scale = self.quantize_input(layer, x.reshape(-1, shape[-1]))
        if x_q.is_cuda:
            y = self._gemm(x_q.shape[0])(x_q, x_scale, layer.weight, layer.weight_scale, bias, out_dtype)
        else:
            w_q = self.weight_values if self.weight_values is not None else layer.weight
            y = fp8_linear_emulated(x_q, x_scale, w_q, layer.weight_scale, bias, out_dtype)
        return y.reshape(*shape[:-1], y.shape[-1])

    def set_tactics(self, table: dict[str, str] | None) -> None:
        """The build's table {str(M bucket): FP8 tactic} for this layer's shape (ingot/tactics/fp8_tuning.py)."""
        from ingot.tactics.fp8_tuning import fp8_linear_fn

        self.tactics = sorted((int(m), fp8_linear_fn(name)) for m, name in (table or {}).items())

    def _gemm(self, num_tokens: int):
        for bucket, fn in self.tactics:
            if num_tokens <= bucket:
                return fn
        if self.tactics:
            return self.tactics[-1][1]
        from ingot.tactics.fp8_tuning import fp8_linear_fn

        return fp8_linear_fn(_UNTUNED)
