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

from ingot.quantization.int4_format import (QMAX, group_min_max, num_groups, pack, per_group, quantize_values,
                                            scales_and_zeros)

ALPHA_GRID = 20
CLIP_GRID = 20
CLIP_MIN_RATIO = 0.5


def fake_quantize(w: torch.Tensor, group_size: int, low: torch.Tensor | None = None,
                  high: torch.Tensor | None = None) -> torch.Tensor:
    """W rounded through the INT4 grid (the group's own range, or [low, high] per group), back in float."""
    if low is None:
        low, high = group_min_max(w, group_size)
    scales, zeros = scales_and_zeros(low, high, torch.float32)
    # The codes' values directly: packing and unpacking them is lossless, and costs more than the rounding.
    s = per_group(scales, group_size)[:, :w.shape[1]]
    z = per_group(zeros.float(), group_size)[:, :w.shape[1]]
    return (torch.clamp(torch.round(w.float() / s) + z, 0, QMAX) - z) * s


def search_scales(weights: list[torch.Tensor], x: torch.Tensor, group_size: int) -> torch.Tensor:
    """The per-input-channel scale s (K,) for linear layers that share the input x (tokens, K)."""
    x = x.float()
    w = torch.cat([t.float() for t in weights], dim=0)
    gram = x.T @ x
    x_mean = x.abs().mean(dim=0).clamp(min=1e-6)
    best, best_error = torch.ones_like(x_mean), float("inf")
    for step in range(ALPHA_GRID):
        s = x_mean.pow(step / ALPHA_GRID)
        s = s / (s.max() * s.min()).sqrt()  # centred around 1: neither tiny nor huge scales
        # (x / s) Q(W s)^T - x W^T  =  x (Q(W s) / s - W)^T
        error = _output_error(fake_quantize(w * s, group_size) / s - w, gram).sum().item()
        if error < best_error:
            best, best_error = s, error
    return best


def search_clipping(w: torch.Tensor, x: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (row, group): the [low, high] range whose rounding best keeps that group's share of the output."""
    w, x = w.float(), x.float()
    n, k = w.shape
    ng = num_groups(k, group_size)
    grams = _group_grams(x, group_size)
    low, high = group_min_max(w, group_size)
    best_low, best_high = low.clone(), high.clone()
    best_error = torch.full((n, ng), float("inf"), device=w.device)
    for step in range(CLIP_GRID):
        ratio = 1.0 - (1.0 - CLIP_MIN_RATIO) * step / CLIP_GRID
        limit = torch.maximum(low.abs(), high.abs()) * ratio
        trial_low, trial_high = torch.maximum(low, -limit), torch.minimum(high, limit)
        w_hat = fake_quantize(w.clamp(*_expand(trial_low, trial_high, group_size, k)), group_size, trial_low, trial_high)
        error = _group_errors(w - w_hat, grams, group_size)
        better = error < best_error
        best_error = torch.where(better, error, best_error)
        best_low, best_high = torch.where(better, trial_low, best_low), torch.where(better, trial_high, best_high)
    return best_low, best_high


def _expand(low: torch.Tensor, high: torch.Tensor, group_size: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    return (low.repeat_interleave(group_size, dim=1)[:, :k], high.repeat_interleave(group_size, dim=1)[:, :k])


# The squared output error of a weight change D on inputs x, summed over tokens, is
# sum_t |x_t D^T|^2 = sum_n D_n (x^T x) D_n^T: the (K, K) Gram matrix x^T x, computed once, stands in for
# every calibration token, so each grid point costs N K^2 instead of tokens x N x K.

def _output_error(diff: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """(N,): each output row's squared error over the tokens whose Gram matrix is `gram`."""
    return ((diff @ gram) * diff).sum(dim=1)


def _group_grams(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """(ng, G, G): the diagonal blocks of x^T x, one per group of input channels (zero padded past K)."""
    k = x.shape[1]
    ng = num_groups(k, group_size)
    xs = torch.nn.functional.pad(x, (0, ng * group_size - k)).view(-1, ng, group_size)
    return torch.einsum("tgc,tgd->gcd", xs, xs)


def _group_errors(diff: torch.Tensor, grams: torch.Tensor, group_size: int) -> torch.Tensor:
    """(N, ng): the squared output error each group's share of the weight change `diff` causes."""
    n, k = diff.shape
    ng = grams.shape[0]
    d = torch.nn.functional.pad(diff, (0, ng * group_size - k)).view(n, ng, group_size)
    return (torch.einsum("ngc,gcd->ngd", d, grams) * d).sum(dim=-1)


def awq_quantize(w: torch.Tensor, x: torch.Tensor, group_size: int, dtype: torch.dtype
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(qweight, scales, zeros) of an already channel-scaled W (N, K), its clipping searched on x."""
    low, high = search_clipping(w, x, group_size)
    scales, zeros = scales_and_zeros(low, high, dtype)
    return pack(quantize_values(w.float(), scales, zeros, group_size)), scales, zeros


__all__ = ["QMAX", "awq_quantize", "fake_quantize", "search_clipping", "search_scales"]
