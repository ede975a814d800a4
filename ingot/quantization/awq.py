"""AWQ (Lin et al., 2024): protect the weight channels that matter by scaling them up before
rounding, the scale folded into what produces the layer's input so the layer's function is kept.

For a layer y = x W^T and a per-input-channel scale s > 0,  y = (x / s)(W diag(s))^T  exactly; only
rounding differs. Channels with large activations carry large products, so scaling their weights up
shrinks their relative rounding error. AWQ searches s = mean|x|^alpha (normalised) over a grid of
alpha in [0, 1), keeping the one whose quantized layers best reproduce the outputs on calibration
inputs; then, per group, a clipping ratio r of the largest weight magnitude (the grid covering
[-r max|w|, r max|w|]) that minimises the group's output error. The 1 / s moves into the previous
operation: an RMSNorm's weight, or the rows of the linear layer that feeds this one (v feeding o
when their shapes agree, up feeding down).
"""

from __future__ import annotations

import torch

from ingot.quantization.int4_format import (QMAX, dequantize, group_min_max, num_groups, pack, quantize_values,
                                            scales_and_zeros)

ALPHA_GRID = 20
CLIP_GRID = 20
CLIP_MIN_RATIO = 0.5
CLIP_TOKENS = 512  # calibration tokens the clipping search scores each group on


def fake_quantize(w: torch.Tensor, group_size: int, low: torch.Tensor | None = None,
                  high: torch.Tensor | None = None) -> torch.Tensor:
    """W rounded through the INT4 grid (the group's own range, or [low, high] per group), back in float."""
    if low is None:
        low, high = group_min_max(w, group_size)
    scales, zeros = scales_and_zeros(low, high, torch.float32)
    return dequantize(pack(quantize_values(w, scales, zeros, group_size)), scales, zeros, w.shape[1], group_size,
                      torch.float32)


def search_scales(weights: list[torch.Tensor], x: torch.Tensor, group_size: int) -> torch.Tensor:
    """The per-input-channel scale s (K,) for linear layers that share the input x (tokens, K)."""
    x = x.float()
    w = torch.cat([t.float() for t in weights], dim=0)
    reference = x @ w.T
    x_mean = x.abs().mean(dim=0).clamp(min=1e-6)
    best, best_error = torch.ones_like(x_mean), float("inf")
    for step in range(ALPHA_GRID):
        s = x_mean.pow(step / ALPHA_GRID)
        s = s / (s.max() * s.min()).sqrt()  # centred around 1: neither tiny nor huge scales
        error = ((x / s) @ fake_quantize(w * s, group_size).T - reference).pow(2).mean().item()
        if error < best_error:
            best, best_error = s, error
    return best


def search_clipping(w: torch.Tensor, x: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (row, group): the [low, high] range whose rounding best keeps that group's share of the output."""
    w, x = w.float(), x.float()[:CLIP_TOKENS]
    n, k = w.shape
    ng = num_groups(k, group_size)
    low, high = group_min_max(w, group_size)
    best_low, best_high = low.clone(), high.clone()
    best_error = torch.full((n, ng), float("inf"), device=w.device)
    for step in range(CLIP_GRID):
        ratio = 1.0 - (1.0 - CLIP_MIN_RATIO) * step / CLIP_GRID
        limit = torch.maximum(low.abs(), high.abs()) * ratio
        trial_low, trial_high = torch.maximum(low, -limit), torch.minimum(high, limit)
        error = _group_errors(w, fake_quantize(w.clamp(*_expand(trial_low, trial_high, group_size, k)), group_size,
                                               trial_low, trial_high), x, group_size)
        better = error < best_error
        best_error = torch.where(better, error, best_error)
        best_low, best_high = torch.where(better, trial_low, best_low), torch.where(better, trial_high, best_high)
    return best_low, best_high


def _expand(low: torch.Tensor, high: torch.Tensor, group_size: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    return (low.repeat_interleave(group_size, dim=1)[:, :k], high.repeat_interleave(group_size, dim=1)[:, :k])


def _group_errors(w: torch.Tensor, w_hat: torch.Tensor, x: torch.Tensor, group_size: int) -> torch.Tensor:
    """(N, ng): the squared output error each group's rounding causes on inputs x, summed over tokens."""
    n, k = w.shape
    ng = num_groups(k, group_size)
    pad = ng * group_size - k
    diff = torch.nn.functional.pad(w - w_hat, (0, pad)).view(n, ng, group_size)
    xs = torch.nn.functional.pad(x, (0, pad)).view(-1, ng, group_size)
    return torch.einsum("tgc,ngc->tng", xs, diff).pow(2).sum(dim=0)


def awq_quantize(w: torch.Tensor, x: torch.Tensor, group_size: int, dtype: torch.dtype
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(qweight, scales, zeros) of an already channel-scaled W (N, K), its clipping searched on x."""
    low, high = search_clipping(w, x, group_size)
    scales, zeros = scales_and_zeros(low, high, dtype)
    return pack(quantize_values(w.float(), scales, zeros, group_size)), scales, zeros


__all__ = ["QMAX", "awq_quantize", "fake_quantize", "search_clipping", "search_scales"]
