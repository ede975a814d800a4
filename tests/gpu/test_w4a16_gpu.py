"""The INT4 weight-only GEMM compiled on the GPU against dequantize-then-matmul, bf16 and fp16,
decode and prefill sizes of the Llama-3.1-8B shapes, with and without split-K."""

from __future__ import annotations

import pytest
import torch

from ingot.kernels.w4a16 import W4A16Config, w4a16_gemm
from ingot.quantization.int4_format import dequantize, round_to_nearest

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m", [1, 7, 16, 64])
@pytest.mark.parametrize("n,k", [(6144, 4096), (4096, 14336), (57, 200)])
@pytest.mark.parametrize("split_k", [1, 4])
@pytest.mark.parametrize("gemv", [False, True])
def test_matches_dequantize_then_matmul(dtype, m, n, k, split_k, gemv):
    torch.manual_seed(m + n + k)
    qweight, scales, zeros = (t.cuda() for t in round_to_nearest(torch.randn(n, k), 128, dtype))
    x = torch.randn(m, k, dtype=dtype, device="cuda")
    out = w4a16_gemm(x, qweight, scales, zeros, 128, None, W4A16Config(1 if gemv else 16, 64, 128, 4, 3, split_k))
    reference = x.double() @ dequantize(qweight, scales, zeros, k, 128, torch.float64).T
    assert ((out.double() - reference).norm() / reference.norm()).item() < 1e-2


def test_build_time_tuning_times_real_tiles_and_dequantizes_above_the_limit():
    from ingot.tactics.int4_tuning import DEQUANT, tune_int4_gemms

    shapes = {"qkv_proj": (6144, 4096), "down_proj": (4096, 14336)}
    table, timings = tune_int4_gemms(shapes, 128, torch.bfloat16, [1, 8, 64, 256], time_budget_s=60.0)
    for name in shapes:
        assert table[name]["256"] == DEQUANT
        for m in ("1", "8", "64"):
            assert table[name][m] in timings[name][m], "the winner was measured"
            assert table[name][m] == DEQUANT or W4A16Config.parse(table[name][m])
        assert table[name]["1"] != DEQUANT, "one token: a W4A16 tile beats dequantizing the whole weight"
