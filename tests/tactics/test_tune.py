"""The tuning loop's bookkeeping with a fake timer and clock; shapes, pick and tactic names."""

from __future__ import annotations

import pytest

from ingot.config import ModelConfig
from ingot.tactics import linear_fn, pick, validate
from ingot.tactics.gemm_tuning import GEMM_NAMES, gemm_shapes
from ingot.tactics.candidates import all_default_triton, default_candidates
from ingot.tactics.tune import run_tuning

LLAMA_8B = ModelConfig(architecture="LlamaForCausalLM", vocab_size=128256, hidden_size=4096,
                       intermediate_size=14336, num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128)


class FakeClock:
    """Time moves only when the fake timer 'runs' a candidate."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def fake_measure(speeds: dict[str, float], clock: FakeClock, cost_s: float = 0.1):
    calls = []

    def measure(name, m, tactic):
        calls.append((name, m, tactic))
        clock.now += cost_s
        if speeds.get(tactic) is None:
            raise RuntimeError("out of shared memory")
        return speeds[tactic] * m

    return measure, calls


def test_gemm_shapes_llama_8b():
    assert gemm_shapes(LLAMA_8B) == {
        "qkv_proj": (6144, 4096), "o_proj": (4096, 4096), "gate_up_proj": (28672, 4096),
        "down_proj": (4096, 14336), "lm_head": (128256, 4096)}
    assert tuple(gemm_shapes(LLAMA_8B)) == GEMM_NAMES


def test_gemm_shapes_tensor_parallel():
    shapes = gemm_shapes(LLAMA_8B, tp_size=2)
    assert shapes["qkv_proj"] == (3072, 4096) and shapes["o_proj"] == (4096, 2048)
    assert shapes["down_proj"] == (4096, 7168) and shapes["lm_head"] == (64128, 4096)


def test_fastest_wins_and_every_timing_is_recorded():
    clock = FakeClock()
    speeds = {"cublas": 2.0, "triton:16x32x256:w4:s4": 1.0, "triton:128x128x64:w8:s4": 3.0}
    measure, _ = fake_measure(speeds, clock)
    table, timings = run_tuning(["a", "b"], [1, 2048], lambda m: list(speeds), measure, 100.0, clock)
    assert table == {"a": {"1": "triton:16x32x256:w4:s4", "2048": "triton:16x32x256:w4:s4"},
                     "b": {"1": "triton:16x32x256:w4:s4", "2048": "triton:16x32x256:w4:s4"}}
    assert timings["a"]["2048"] == {t: s * 2048 for t, s in speeds.items()}


def test_failing_candidate_loses_without_stopping_the_build():
    clock = FakeClock()
    measure, _ = fake_measure({"cublas": 2.0, "triton:bad": None}, clock)
    table, timings = run_tuning(["a"], [8], lambda m: ["triton:bad", "cublas"], measure, 100.0, clock)
    assert table == {"a": {"8": "cublas"}} and timings["a"]["8"] == {"cublas": 16.0}


def test_all_failing_falls_back_to_cublas():
    clock = FakeClock()
    measure, _ = fake_measure({}, clock)
    table, _ = run_tuning(["a"], [8], lambda m: ["triton:x"], measure, 100.0, clock)
    assert table == {"a": {"8": "cublas"}}


def test_budget_stops_measuring_and_falls_back():
    clock = FakeClock()
    speeds = {"cublas": 2.0, "triton:fast": 1.0}
    measure, calls = fake_measure(speeds, clock, cost_s=1.0)
    table, timings = run_tuning(["a", "b"], [1, 8], lambda m: list(speeds), measure, 3.0, clock)
    assert len(calls) == 3  # the 4th measurement would start at t=3.0, past the budget
    assert table["a"] == {"1": "triton:fast", "8": "cublas"}  # "8" got only cuBLAS measured
    assert table["b"] == {"1": "cublas", "8": "cublas"} and timings["b"]["1"] == {}


def test_duplicate_buckets_are_tuned_once():
    clock = FakeClock()
    measure, calls = fake_measure({"cublas": 1.0}, clock)
    table, _ = run_tuning(["a"], [8, 1, 8], lambda m: ["cublas"], measure, 100.0, clock)
    assert list(table["a"]) == ["1", "8"] and len(calls) == 2


@pytest.mark.parametrize("m,bucket", [(1, "1"), (2, "8"), (8, "8"), (9, "32"), (2048, "2048"), (5000, "2048")])
def test_pick_smallest_bucket_at_least_m(m, bucket):
    table = {b: f"t{b}" for b in ("2048", "1", "32", "8")}  # order of keys must not matter
    assert pick(table, m) == f"t{bucket}"


def test_pick_empty_table_is_cublas():
    assert pick({}, 7) == "cublas"


def test_default_candidates_by_tier():
    decode, prefill = default_candidates(1), default_candidates(2048)
    assert decode[0] == prefill[0] == "cublas"
    assert all(t.startswith(("triton:16x", "gemv:")) for t in decode[1:])
    assert any(t.startswith("gemv:") for t in decode) and not any(t.startswith("gemv:") for t in default_candidates(8))
    assert all(t.startswith("triton:128x") for t in prefill[1:])
    assert len(all_default_triton()) <= 10  # each is a compile at build time
    pytest.importorskip("triton")
    for tactic in all_default_triton():
        validate(tactic)


def test_linear_fn_names():
    import torch.nn.functional as F

    assert linear_fn("cublas") is F.linear
    with pytest.raises(ValueError, match="unknown GEMM tactic"):
        linear_fn("cutlass")
    pytest.importorskip("triton")
    with pytest.raises(ValueError, match="triton:BMxBNxBK"):
        validate("triton:64")


def test_tune_on_cpu_is_refused():
    from ingot.tactics.gemm_tuning import tune_gemms

    with pytest.raises(ValueError, match="CUDA"):
        tune_gemms(LLAMA_8B, None, [1], device="cpu")
