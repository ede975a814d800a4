"""FP8 GEMM on NVIDIA GPUs with FP8 tensor cores (Ada, capability 8.9, and Hopper, 9.0): the same
product as fp8_method.fp8_linear_emulated through torch._scaled_mm (cuBLASLt).

Untested on CPU-only CI: tests/gpu checks it against the emulation. Where _scaled_mm cannot take
a case (an older GPU, per-row scales before Hopper or with an output other than bf16, inner sizes
not multiples of 16) `scaled_mm` returns None and the caller runs the emulation.
"""

from __future__ import annotations

import functools

import torch


@functools.cache
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def scaled_mm(x_q: torch.Tensor, x_scale: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor,
              bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor | None:
    """x_q (M, K) E4M3, x_scale (M, 1) or (1,); w_q (N, K) E4M3, w_scale (N, 1) or (1,): the (M, N)
    result in out_dtype, or None where _scaled_mm cannot run it here."""
    capability = _capability(x_q.device.index or 0)
    rowwise = w_scale.numel() > 1 or x_scale.numel() > 1
    if capability < (8, 9) or x_q.shape[1] % 16 or w_q.shape[0] % 16:
        return None
    if rowwise and (capability < (9, 0) or out_dtype != torch.bfloat16):
        return None
    if rowwise:  # both operands per row: (M, 1) for the tokens, (1, N) for the output channels
        scale_a = x_scale.expand(x_q.shape[0], 1).contiguous()
        scale_b = w_scale.reshape(1, -1).contiguous()
    else:
        scale_a, scale_b = x_scale.reshape(()), w_scale.reshape(())
    # w_q.t() is (K, N) column-major, the layout cuBLASLt wants for the second operand.
    y = torch._scaled_mm(x_q, w_q.t(), scale_a=scale_a, scale_b=scale_b, out_dtype=out_dtype)
    return y if bias is None else y + bias
