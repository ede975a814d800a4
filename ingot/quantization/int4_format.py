"""ingot's INT4 weight layout, and the group-wise quantization arithmetic every INT4 method shares.

A linear weight W (N out, K in) is cut along K into groups of G columns (the last group shorter
when G does not divide K); each row of each group has its own scale s and 4-bit zero point z:

    q = clamp(round(w / s) + z, 0, 15)        w_hat = (q - z) * s        (asymmetric, unsigned 4-bit)

Stored tensors (the runtime layout the kernels read; sharded like W along N and K):
    qweight  int32 (N, ceil(K / 8))   eight 4-bit values per word along K: column k is bits
                                      4 (k % 8) .. 4 (k % 8) + 3 of word k // 8 (zero padded past K)
    scales   model dtype (N, ceil(K / G))
    zeros    uint8 (N, ceil(K / G))   one zero point per byte
Checkpoint formats with other packings (AutoAWQ, GPTQ, compressed-tensors) are repacked into this
one at build time.
"""

from __future__ import annotations

import torch

BITS = 4
PACK = 32 // BITS  # values per int32 word
QMAX = (1 << BITS) - 1


def num_groups(in_features: int, group_size: int) -> int:
    return -(-in_features // group_size)


def pack(q: torch.Tensor) -> torch.Tensor:
    """(N, K) integers in [0, 15] -> (N, ceil(K / 8)) int32, column k in bits 4 (k % 8) of word k // 8."""
    n, k = q.shape
    padded = torch.zeros((n, num_groups(k, PACK) * PACK), dtype=torch.int64, device=q.device)
    padded[:, :k] = q.to(torch.int64)
    shifts = torch.arange(PACK, device=q.device) * BITS
    words = (padded.view(n, -1, PACK) << shifts).sum(dim=-1)  # < 2^32: fits int64, wraps into int32 below
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def unpack(qweight: torch.Tensor, in_features: int) -> torch.Tensor:
    """(N, ceil(K / 8)) int32 -> (N, K) uint8 values in [0, 15]."""
    shifts = torch.arange(PACK, device=qweight.device) * BITS
    values = (qweight.to(torch.int64).unsqueeze(-1) >> shifts) & QMAX
    return values.reshape(qweight.shape[0], -1)[:, :in_features].to(torch.uint8)


def per_group(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """(N, ng) -> (N, ng * G): each group's value repeated over its columns."""
    return x.repeat_interleave(group_size, dim=1)


def dequantize(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, in_features: int,
               group_size: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The (N, K) weight the stored tensors stand for, in `dtype` (default: the scales')."""
    q = unpack(qweight, in_features).float()
    s = per_group(scales.float(), group_size)[:, :in_features]
    z = per_group(zeros.float(), group_size)[:, :in_features]
    return ((q - z) * s).to(dtype or scales.dtype)


def group_min_max(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) -> per-group minimum and maximum, (N, ng) each (a short last group counts its own columns)."""
    n, k = w.shape
    ng = num_groups(k, group_size)
    pad = ng * group_size - k
    low = torch.nn.functional.pad(w, (0, pad), value=float("inf")).view(n, ng, group_size).amin(dim=-1)
    high = torch.nn.functional.pad(w, (0, pad), value=float("-inf")).view(n, ng, group_size).amax(dim=-1)
    return low, high


def scales_and_zeros(low: torch.Tensor, high: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The asymmetric grid covering [low, high] per group (0 always representable); scales already
    rounded to the stored dtype, so quantizing and dequantizing use the same numbers."""
    low, high = low.clamp(max=0.0), high.clamp(min=0.0)
    scales = ((high - low) / QMAX).clamp(min=1e-8).to(dtype)
    zeros = torch.round(-low / scales.float()).clamp(0, QMAX).to(torch.uint8)
    return scales, zeros


def quantize_values(w: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    """(N, K) float -> (N, K) uint8 codes on the given per-group grid."""
    k = w.shape[1]
    s = per_group(scales.float(), group_size)[:, :k]
    z = per_group(zeros.float(), group_size)[:, :k]
    return torch.clamp(torch.round(w.float() / s) + z, 0, QMAX).to(torch.uint8)


def round_to_nearest(w: torch.Tensor, group_size: int, dtype: torch.dtype
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RTN, the baseline: each group's own min/max grid. Returns (qweight, scales, zeros)."""
    scales, zeros = scales_and_zeros(*group_min_max(w.float(), group_size), dtype)
    return pack(quantize_values(w, scales, zeros, group_size)), scales, zeros
