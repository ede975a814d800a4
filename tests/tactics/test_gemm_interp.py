"""ingot/kernels/gemm.py in Triton's interpreter against torch, fp16 and fp32, odd sizes."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("triton") is None or os.environ.get("TRITON_INTERPRET", "0") in ("", "0"),
        reason="needs triton's interpreter (set by tests/tactics/conftest.py where there is no CUDA)"),
    pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning"),  # the interpreter's
]

SMALL = "triton:16x32x32:w4:s2"  # small blocks: several tiles and K steps even at test sizes


def _gemm(x, w, bias=None, tactic=SMALL):
    from ingot.kernels.gemm import GemmConfig, gemm

    return gemm(x, w, bias, config=GemmConfig.parse(tactic))


def _rel_err(out, ref):
    return ((out.double() - ref).norm() / ref.norm()).item()


def _ref(x, w, bias=None):
    out = x.double() @ w.double().T
    return out + bias.double() if bias is not None else out


# (M, N, K): K multiple of 8 takes the tensor-descriptor (TMA) path, odd K or N the pointer path.
SHAPES = [(1, 48, 64), (3, 40, 96), (17, 72, 64), (33, 64, 128), (5, 37, 64), (7, 40, 37), (1, 9, 5)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_matches_torch(m, n, k, dtype):
    g = torch.Generator().manual_seed(m * 1000 + n * 10 + k)
    x = torch.randn(m, k, generator=g).to(dtype)
    w = (torch.randn(n, k, generator=g) * k ** -0.5).to(dtype)
    out = _gemm(x, w)
    assert out.shape == (m, n) and out.dtype == dtype
    assert _rel_err(out, _ref(x, w)) < (2e-3 if dtype == torch.float16 else 1e-5)


@pytest.mark.parametrize("n,k", [(40, 64), (37, 37)])
def test_bias_and_leading_dims(n, k):
    x = torch.randn(2, 3, k, dtype=torch.float16)
    w = (torch.randn(n, k) * k ** -0.5).half()
    bias = torch.randn(n).half()
    out = _gemm(x, w, bias)
    assert out.shape == (2, 3, n)
    assert _rel_err(out.reshape(6, n), _ref(x.reshape(6, k), w, bias)) < 2e-3


def test_persistent_walk_covers_every_tile():
    """More tiles than the interpreter's 4 persistent programs, with grouped ordering: every
    element right, checked one by one (a norm could hide one missed tile)."""
    x = torch.randn(70, 64).half()
    w = (torch.randn(200, 64) * 0.125).half()
    torch.testing.assert_close(_gemm(x, w).double(), _ref(x, w), atol=1e-2, rtol=1e-2)


def test_unaligned_view_takes_pointer_path():
    base = torch.randn(9, 66).half()
    x = base[:, 1:65]  # row stride 66 elements = 132 bytes: not 16-byte aligned
    w = (torch.randn(24, 64) * 0.125).half()
    assert _rel_err(_gemm(x, w), _ref(x, w)) < 2e-3


def test_empty_batch():
    out = _gemm(torch.empty(0, 32).half(), torch.randn(16, 32).half())
    assert out.shape == (0, 16)


def test_bad_arguments_are_clear():
    from ingot.kernels.gemm import GemmConfig

    x, w = torch.randn(4, 32).half(), torch.randn(16, 32).half()
    with pytest.raises(ValueError, match="weight: shape"):
        _gemm(x, torch.randn(16, 31).half())
    with pytest.raises(ValueError, match="differs"):
        _gemm(x, w.float())
    with pytest.raises(ValueError, match="bias"):
        _gemm(x, w, torch.randn(15).half())
    with pytest.raises(ValueError, match="triton:BMxBNxBK"):
        GemmConfig.parse("triton:64x64:w4")
    with pytest.raises(ValueError, match="powers of two"):
        GemmConfig.parse("triton:24x64x64:w4:s3")
