"""Triton kernels for the GPU path, each beside its launcher (which checks its arguments).

Drop-in replacements for the torch layers (same arguments, same semantics, same rounding):
    rmsnorm(x, weight, eps)                       ingot.layers.norm.RMSNorm without residual
    fused_add_rmsnorm(x, residual, weight, eps)   RMSNorm with residual -> (normed, x + residual)
    apply_rotary(positions, q, k, cos, sin)       RotaryEmbedding.forward with its cos/sin tables
    silu_and_mul(x)                               ingot.layers.activation.silu_and_mul
Attention (used by ingot.attention.triton_backend):
    write_kv_cache, prefill_attention, decode_attention

Importing this package imports triton. Tests run the kernels on the CPU in Triton's interpreter
(TRITON_INTERPRET=1 set before the first import of triton); otherwise they need CUDA tensors.
"""

from ingot.kernels.activation import silu_and_mul
from ingot.kernels.decode_attention import decode_attention
from ingot.kernels.kv_write import write_kv_cache
from ingot.kernels.prefill_attention import prefill_attention
from ingot.kernels.rmsnorm import fused_add_rmsnorm, rmsnorm
from ingot.kernels.rotary import apply_rotary

__all__ = [
    "apply_rotary", "decode_attention", "fused_add_rmsnorm", "prefill_attention", "rmsnorm",
    "silu_and_mul", "write_kv_cache",
]
