"""Small kernels folded into the GEMV of a one-token step (TensorRT-LLM fuses the same pairs).

At batch 1 to 4 a decode step's linear layers run the GEMV kernel (ingot/kernels/gemv.py) when
the build timed it fastest; there, the RMSNorm before qkv_proj and gate_up_proj and the SiLU·mul
before down_proj become the GEMV's prologue, which saves three kernel launches per layer (96 of a
Llama-8B step's ~420) and the round trips of their outputs. Everywhere else (CPU, larger batches,
quantized layers, a layer tuned to another kernel) these helpers run the two steps unfused; the
results are equal either way (the prologues round as the separate kernels do).
"""

from __future__ import annotations

import torch

from ingot.layers.activation import silu_and_mul
from ingot.layers.norm import RMSNorm


def _gemv_config(linear, x: torch.Tensor):
    """The GEMV config the layer's tuned table gives this many tokens, or None."""
    picker = getattr(linear.method, "gemv_config", None)
    return picker(x.shape[0]) if picker is not None and x.is_cuda else None


def rmsnorm_linear(norm: RMSNorm, linear, x: torch.Tensor,
                   residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(linear(norm(x + residual)), x + residual) for a column-parallel (or single-rank) linear;
    without a residual, (linear(norm(x)), x)."""
    config = _gemv_config(linear, x)
    if config is None or not x.is_contiguous():
        if residual is None:
            return linear(norm(x)), x
        normed, residual = norm(x, residual)
        return linear(normed), residual
    from ingot.kernels.gemv import gemv_rmsnorm

    return gemv_rmsnorm(x, residual, norm.weight, norm.eps, linear.weight, linear.bias, config)


def silu_mul_linear(down, gate_up: torch.Tensor) -> torch.Tensor:
    """down(silu(gate) * up) for a row-parallel down projection (its all-reduce included)."""
    config = _gemv_config(down, gate_up)
    if config is None:
        return down(silu_and_mul(gate_up))
    from ingot.kernels.gemv import gemv_silu_mul
    from ingot.parallel.comm import all_reduce

    partial = gemv_silu_mul(gate_up, down.weight, down.bias if down.tp_rank == 0 else None, config)
    return all_reduce(partial, down.tp_size)
