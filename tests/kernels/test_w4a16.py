"""The INT4 weight-only GEMM (ingot/kernels/w4a16.py) in Triton's interpreter against the torch
reference (dequantize, then matmul in float64): odd sizes, ragged last groups, split-K."""

from __future__ import annotations

import pytest
import torch

from ingot.kernels.w4a16 import W4A16Config, w4a16_gemm
from ingot.quantization.int4_format import dequantize, round_to_nearest

# (M, N, K, group): K not a multiple of the group (a short last group), N and M odd
CASES = [(1, 48, 64, 32), (3, 40, 96, 32), (17, 72, 128, 64), (5, 37, 72, 32), (2, 16, 200, 128), (33, 64, 256, 128)]
# tl.dot tiles and GEMV, whole and split K; BK 128 spans several groups of 32 / 64 (per-word scales)
CONFIGS = [W4A16Config(16, 32, 128, 4, 2, 1), W4A16Config(16, 32, 128, 4, 2, 3), W4A16Config(1, 32, 64, 4, 2, 1),
           W4A16Config(1, 16, 128, 4, 2, 2)]


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
@pytest.mark.parametrize("m,n,k,group", CASES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_matches_dequantize_then_matmul(m, n, k, group, config, dtype):
    torch.manual_seed(m * 1000 + n + k)
    qweight, scales, zeros = round_to_nearest(torch.randn(n, k), group, dtype)
    x = torch.randn(m, k, dtype=dtype)
    bias = torch.randn(n, dtype=dtype)
    out = w4a16_gemm(x, qweight, scales, zeros, group, bias, config)
    reference = x.double() @ dequantize(qweight, scales, zeros, k, group, torch.float64).T + bias.double()
    assert out.dtype == dtype and out.shape == (m, n)
    error = ((out.double() - reference).norm() / reference.norm()).item()
    assert error < (2e-3 if dtype == torch.float16 else 1e-5), error


def test_bad_arguments_are_named():
    qweight, scales, zeros = round_to_nearest(torch.randn(8, 64), 32, torch.float32)
    with pytest.raises(ValueError, match=r"block_k 64 must be a power of two >= 128 for block_m 16"):
        w4a16_gemm(torch.randn(2, 64), qweight, scales, zeros, 32, config=W4A16Config(block_k=64))
    with pytest.raises(ValueError, match=r"block_m 4 must be 1 \(GEMV\) or >= 16"):
        w4a16_gemm(torch.randn(2, 64), qweight, scales, zeros, 32, config=W4A16Config(block_m=4))
    with pytest.raises(ValueError, match=r"qweight: shape \(8, 8\) does not match \(8, 9\)"):
        w4a16_gemm(torch.randn(2, 72), qweight, scales, zeros, 32)
    assert W4A16Config.parse("w4a16:16x64x128:w4:s3:k2") == W4A16Config(16, 64, 128, 4, 3, 2)
