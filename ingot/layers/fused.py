"""Small kernels folded into the GEMV of a one-token step (TensorRT-LLM fuses the same pair).

At batch 1 to 4 a decode step's linear layers run the GEMV kernel (ingot/kernels/gemv.py) when
the build timed it fastest; there, the SiLU·mul before down_proj becomes the GEMV's prologue,
which saves a kernel launch per layer and the round trip of its output. Everywhere else (CPU,
larger batches, quantized layers, a layer tuned to another kernel) it runs unfused; the results
are equal either way (the prologue rounds as the separate kernel does). Before an FP8 down_proj
the SiLU·mul kernel quantizes its output instead (ingot/kernels/fp8_quant.py).

RMSNorm is not folded: a GEMV prologue must first sum the whole row's squares before its weight
stream can start, and on the H200 that serial pass cost more than the launch it saved (batch-1
decode of the 8B shape: 209.2 tok/s with both folds, 216.3 with neither).
"""

from __future__ import annotations

import torch

from ingot.layers.activation import silu_and_mul
from ingot.quantization.fp8_format import Fp8Activation


def _gemv_config(linear, x: torch.Tensor):
    """The GEMV config the layer's tuned table gives this many tokens, or None."""
    picker = getattr(linear.method, "gemv_config", None)
    return picker(x.shape[0]) if picker is not None and x.is_cuda else None


def silu_mul_linear(down, gate_up: torch.Tensor) -> torch.Tensor:
    """down(silu(gate) * up) for a row-parallel down projection (its all-reduce included)."""
    fp8_input_scale = getattr(down.method, "fp8_input_scale", None)
    if fp8_input_scale is not None and gate_up.is_cuda:  # FP8 down_proj: quantize inside the SiLU·mul kernel
        from ingot.kernels.fp8_quant import silu_and_mul_fp8

        return down(Fp8Activation(*silu_and_mul_fp8(gate_up, fp8_input_scale(down))))
    config = _gemv_config(down, gate_up)
    if config is None:
        return down(silu_and_mul(gate_up))
    from ingot.kernels.gemv import gemv_silu_mul
    from ingot.parallel.comm import all_reduce

    partial = gemv_silu_mul(gate_up, down.weight, down.bias if down.tp_rank == 0 else None, config)
    return all_reduce(partial, down.tp_size)
