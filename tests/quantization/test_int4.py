"""INT4: the stored layout round-trips, and on held-out inputs AWQ and GPTQ reproduce a layer's
outputs better than round-to-nearest at the same group size."""

from __future__ import annotations

import pytest
import torch

from ingot.quantization.awq import awq_quantize, search_scales
from ingot.quantization.gptq import gptq_quantize
from ingot.quantization.int4_format import (dequantize, num_groups, pack, round_to_nearest, unpack)


@pytest.mark.parametrize("n,k,group", [(5, 72, 32), (3, 100, 128), (16, 576, 128), (7, 64, 64), (1, 8, 32)])
def test_pack_unpack_and_rtn_error_bound(n, k, group):
    torch.manual_seed(n * k)
    codes = torch.randint(0, 16, (n, k), dtype=torch.uint8)
    packed = pack(codes)
    assert packed.dtype == torch.int32 and packed.shape == (n, -(-k // 8))
    assert torch.equal(unpack(packed, k), codes)
    assert int(unpack(pack(torch.full((1, 8), 15, dtype=torch.uint8)), 8).sum()) == 120, "the top bit survives"
    w = torch.randn(n, k)
    qweight, scales, zeros = round_to_nearest(w, group, torch.float32)
    assert scales.shape == zeros.shape == (n, num_groups(k, group))
    error = (dequantize(qweight, scales, zeros, k, group, torch.float32) - w).abs()
    per_column_scale = scales.repeat_interleave(group, dim=1)[:, :k]
    assert bool((error <= per_column_scale / 2 + 1e-6).all()), "RTN is within half a step of every weight"


def _correlated_layer(seed: int, k: int = 256, n: int = 96, tokens: int = 4096):
    """Inputs like a transformer's: correlated channels, a few with outliers; a weight; calibration
    and held-out halves."""
    torch.manual_seed(seed)
    hidden = torch.randn(tokens, 32) @ torch.randn(32, k) + 0.3 * torch.randn(tokens, k)
    x = hidden * (1 + 8 * (torch.rand(k) < 0.05).float())
    return x[: tokens // 2], x[tokens // 2:], torch.randn(n, k) * 0.05


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("group", [32, 128])
def test_gptq_and_awq_beat_round_to_nearest_on_held_out_inputs(seed, group):
    calib, held_out, w = _correlated_layer(seed)
    k = w.shape[1]

    def error(w_hat):
        return ((held_out @ w_hat.T) - held_out @ w.T).pow(2).mean().item()

    rtn = error(dequantize(*round_to_nearest(w, group, torch.float32), k, group, torch.float32))
    hessian = 2 * calib.T @ calib / len(calib)
    qweight, scales, zeros, _ = gptq_quantize(w, hessian, group, torch.float32)
    gptq = error(dequantize(qweight, scales, zeros, k, group, torch.float32))
    qweight, scales, zeros, perm = gptq_quantize(w, hessian, group, torch.float32, act_order=True)
    act_order = error(dequantize(qweight, scales, zeros, k, group, torch.float32)[:, torch.argsort(perm.long())])
    s = search_scales([w], calib, group)
    qweight, scales, zeros = awq_quantize(w * s, calib / s, group, torch.float32)
    awq = error(dequantize(qweight, scales, zeros, k, group, torch.float32) / s)
    assert gptq < 0.5 * rtn and act_order < rtn and awq < 0.8 * rtn, (rtn, gptq, act_order, awq)
