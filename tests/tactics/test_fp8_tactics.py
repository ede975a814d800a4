"""FP8 tactic names: candidates per token count, parsing, and a layer's table resolved at load."""

from __future__ import annotations

import pytest

from ingot.quantization.fp8_method import Fp8LinearMethod
from ingot.tactics.fp8_tuning import GEMV_MAX_M, SCALED_MM, fp8_candidates, fp8_linear_fn


@pytest.mark.parametrize("m", [1, 4, 5, 16, 64, 300, 8192])
def test_candidates_parse_and_start_with_cublaslt(m):
    candidates = fp8_candidates(m)
    assert candidates[0] == SCALED_MM
    assert any(c.startswith("gemv:") for c in candidates) == (m <= GEMV_MAX_M)
    for tactic in candidates:
        assert callable(fp8_linear_fn(tactic))


@pytest.mark.parametrize("bad", ["cublas", "triton:16x16", "gemv:3x64:w4:s3", "fp8"])
def test_unknown_tactic_is_refused(bad):
    with pytest.raises(ValueError, match="tactic"):
        fp8_linear_fn(bad)


def test_method_picks_the_smallest_bucket_that_holds_the_step():
    method = Fp8LinearMethod(per_channel=True)
    method.set_tactics({"1": "gemv:16x512:w4:s3", "64": "triton:64x64x256:w4:s4", "2048": SCALED_MM})
    assert method._gemm(1) is fp8_linear_fn("gemv:16x512:w4:s3")
    assert method._gemm(2) is fp8_linear_fn("triton:64x64x256:w4:s4")
    assert method._gemm(9000) is fp8_linear_fn(SCALED_MM)
    method.set_tactics(None)
    assert method._gemm(7) is fp8_linear_fn(SCALED_MM)
