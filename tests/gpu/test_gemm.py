"""ingot/kernels/gemm.py compiled on CUDA against torch, and tactic tuning on the real GPU."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

from ingot.config import ModelConfig  # noqa: E402
from ingot.tactics import linear_fn, pick  # noqa: E402
from ingot.tactics.gemm_tuning import GEMM_NAMES, tune_gemms_with_timings  # noqa: E402
from ingot.tactics.candidates import all_default_triton  # noqa: E402

SMALL_MODEL = ModelConfig(architecture="LlamaForCausalLM", vocab_size=32000, hidden_size=1024,
                          intermediate_size=2816, num_layers=2, num_heads=8, num_kv_heads=2, head_dim=128)


def _rel_err(out, ref):
    return ((out.double() - ref).norm() / ref.norm()).item()


def _inputs(m, n, k, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(m, k, device="cuda", generator=g).to(dtype)
    w = (torch.randn(n, k, device="cuda", generator=g) * k ** -0.5).to(dtype)
    return x, w


@pytest.mark.parametrize("tactic", all_default_triton())
@pytest.mark.parametrize("m", [1, 3, 17, 129, 1000])
def test_default_configs_bf16(tactic, m):
    x, w = _inputs(m, 1536, 1024, torch.bfloat16, seed=m)
    # Poison: the caching allocator hands this freed NaN block to the kernel's output, so an
    # element the kernel fails to write stays NaN.
    x.new_full((m, 1536), float("nan"))  # freed at once
    out = linear_fn(tactic)(x, w, None)
    assert torch.isfinite(out).all()
    assert _rel_err(out, x.double() @ w.double().T) < 1e-2


@pytest.mark.parametrize("m,n,k", [(1, 37, 100), (17, 4099, 72), (129, 1000, 4100), (3, 6144, 4096)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_odd_shapes_and_bias(m, n, k, dtype):
    """Odd N or K leave the TMA path (unaligned rows) for the masked pointer kernel."""
    x, w = _inputs(m, n, k, dtype, seed=n + k)
    bias = torch.randn(n, device="cuda").to(dtype)
    for tactic in ("triton:16x64x128:w4:s5", "triton:128x128x64:w8:s4"):
        out = linear_fn(tactic)(x, w, bias)
        assert _rel_err(out, x.double() @ w.double().T + bias.double()) < 1e-2, tactic


def test_cuda_graph_replay():
    """Decode steps replay as CUDA graphs: the kernel (and its TMA descriptors) must capture."""
    x, w = _inputs(8, 4096, 4096, torch.bfloat16, seed=1)
    fn = linear_fn("triton:16x32x256:w4:s4")
    fn(x, w, None)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(x, w, None)
    x.copy_(torch.randn_like(x))
    graph.replay()
    assert _rel_err(out, x.double() @ w.double().T) < 1e-2


def test_tuning_picks_and_records_winners():
    buckets = [1, 64, 512]
    table, timings = tune_gemms_with_timings(SMALL_MODEL, torch.bfloat16, buckets, time_budget_s=60.0)
    assert set(table) == set(GEMM_NAMES)
    for name in GEMM_NAMES:
        assert set(table[name]) == {"1", "64", "512"}
        for bucket, tactic in table[name].items():
            measured = timings[name][bucket]
            assert "cublas" in measured and len(measured) >= 2  # cuBLAS and at least one Triton config ran
            assert tactic == min(measured, key=measured.get)
            assert all(0 < us < 1e5 for us in measured.values())
    # The stored winner computes the right thing when the runtime uses it.
    tactic = pick(table["down_proj"], 40)
    assert tactic == table["down_proj"]["64"]
    x, w = _inputs(40, 1024, 2816, torch.bfloat16, seed=5)
    assert _rel_err(linear_fn(tactic)(x, w, None), x.double() @ w.double().T) < 1e-2


def test_spent_budget_falls_back_to_cublas():
    table, timings = tune_gemms_with_timings(SMALL_MODEL, torch.bfloat16, [1, 8], time_budget_s=0.0)
    assert all(t == "cublas" for per_m in table.values() for t in per_m.values())
    assert all(not r for per_m in timings.values() for r in per_m.values())


GEMV_TACTICS = ("gemv:16x256:w4:s3", "gemv:8x512:w4:s3", "gemv:32x256:w8:s3", "gemv:4x1024:w4:s4")


@pytest.mark.parametrize("tactic", GEMV_TACTICS)
@pytest.mark.parametrize("m,n,k", [(1, 6144, 4096), (2, 4096, 14336), (3, 1000, 4100), (4, 37, 100)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gemv_tactics(tactic, m, n, k, dtype):
    x, w = _inputs(m, n, k, dtype, seed=m + n)
    bias = torch.randn(n, device="cuda").to(dtype) if k % 2 else None
    x.new_full((m, n), float("nan"))  # poison the block the output may get
    out = linear_fn(tactic)(x, w, bias)
    ref = x.double() @ w.double().T + (bias.double() if bias is not None else 0)
    assert torch.isfinite(out).all() and _rel_err(out, ref) < 1e-2


def test_gemv_captures_in_a_cuda_graph():
    x, w = _inputs(1, 4096, 4096, torch.bfloat16, seed=3)
    fn = linear_fn("gemv:16x256:w4:s3")
    fn(x, w, None)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(x, w, None)
    x.copy_(torch.randn_like(x))
    graph.replay()
    assert _rel_err(out, x.double() @ w.double().T) < 1e-2


@pytest.mark.parametrize("m", [1, 2, 4])
def test_fused_silu_mul_equals_the_separate_kernels_bitwise(m):
    """SiLU·mul folded into the GEMV rounds as the separate kernel does."""
    from ingot.kernels import silu_and_mul
    from ingot.kernels.gemv import GemvConfig, gemv, gemv_silu_mul

    config = GemvConfig(16, 256)
    gate_up = torch.randn(m, 2 * 14336, device="cuda").to(torch.bfloat16)
    down = (torch.randn(4096, 14336, device="cuda") * 14336 ** -0.5).to(torch.bfloat16)
    assert torch.equal(gemv_silu_mul(gate_up, down, None, config), gemv(silu_and_mul(gate_up), down, None, config))
