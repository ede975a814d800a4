"""ingot/kernels/gemv.py in Triton's interpreter against torch: 1-4 rows, odd sizes, bias."""

from __future__ import annotations

import pytest
import torch

from ingot.kernels.gemv import MAX_M, GemvConfig, gemv


def _reference(x, w, bias):
    out = x.double() @ w.double().T
    return out + bias.double() if bias is not None else out


@pytest.mark.parametrize("m", [1, 2, 3, 4])
@pytest.mark.parametrize("n,k", [(64, 256), (37, 100), (130, 515)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_matches_torch(m, n, k, dtype):
    g = torch.Generator().manual_seed(m * 1000 + n + k)
    x = torch.randn(m, k, generator=g).to(dtype)
    w = (torch.randn(n, k, generator=g) * k ** -0.5).to(dtype)
    bias = torch.randn(n, generator=g).to(dtype) if n % 2 else None
    for config in (GemvConfig(16, 64), GemvConfig(4, 128, 4, 2)):
        out = gemv(x, w, bias, config)
        assert out.dtype == dtype and out.shape == (m, n)
        torch.testing.assert_close(out.double(), _reference(x, w, bias), atol=2e-3, rtol=2e-3)


def test_bf16_elementwise_is_exact_enough():
    """No tl.dot here, so bf16 is right in the interpreter too (its bf16 dot is not)."""
    x = torch.randn(1, 300).bfloat16()
    w = (torch.randn(50, 300) / 17).bfloat16()
    torch.testing.assert_close(gemv(x, w, None, GemvConfig(8, 128)).double(), _reference(x, w, None),
                               atol=2e-2, rtol=2e-2)


def test_refuses_more_rows_and_bad_names():
    with pytest.raises(ValueError, match=f"at most {MAX_M}"):
        gemv(torch.randn(MAX_M + 1, 8), torch.randn(4, 8))
    with pytest.raises(ValueError, match="gemv:BNxBK"):
        GemvConfig.parse("gemv:16:w4:s3")
    with pytest.raises(ValueError, match="powers of two"):
        GemvConfig.parse("gemv:12x256:w4:s3")
    assert GemvConfig.parse("gemv:16x256:w4:s3") == GemvConfig(16, 256, 4, 3)


def test_tactic_falls_back_above_four_tokens():
    from ingot.tactics.candidates import linear_fn

    fn = linear_fn("gemv:16x64:w4:s2")
    x, w = torch.randn(9, 64), torch.randn(32, 64)
    torch.testing.assert_close(fn(x, w, None), x @ w.T)
    torch.testing.assert_close(fn(x[:2], w, None), x[:2] @ w.T, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("m,k,n", [(1, 256, 64), (2, 100, 37)])
def test_silu_mul_prologue_equals_activation_then_gemv(m, k, n):
    from ingot.kernels.gemv import gemv_silu_mul
    from ingot.layers.activation import silu_and_mul

    g = torch.Generator().manual_seed(k + n)
    gate_up = torch.randn(m, 2 * k, generator=g).half()
    w = (torch.randn(n, k, generator=g) * k ** -0.5).half()
    out = gemv_silu_mul(gate_up, w, None, GemvConfig(8, 64))
    torch.testing.assert_close(out.double(), _reference(silu_and_mul(gate_up), w, None), atol=3e-3, rtol=3e-3)
    with pytest.raises(ValueError, match="twice"):
        gemv_silu_mul(gate_up[:, :-2], w)
