"""Build-time tactic tuning: which GEMM implementation runs for which matmul at which batch.

The builder calls tune_gemms_with_timings on the target GPU and stores the table in engine.json;
the runtime reads it through ingot/tactics/table.py (and never imports this module).
"""

from __future__ import annotations

import logging
import time

import torch

from ingot.tactics.candidates import default_candidates, linear_fn, validate
from ingot.tactics.tune import Table, Timings, run_tuning

GEMM_NAMES = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj", "lm_head")


def gemm_shapes(model_config, tp_size: int = 1) -> dict[str, tuple[int, int]]:
    """name -> (N, K) of one rank's weight. Column-parallel GEMMs (qkv, gate_up, lm_head) split N,
    row-parallel ones (o, down) split K, as the tensor-parallel layers shard them."""
    c = model_config
    full = {
        "qkv_proj": (c.q_size + 2 * c.kv_size, c.hidden_size, "col"),
        "o_proj": (c.hidden_size, c.q_size, "row"),
        "gate_up_proj": (2 * c.intermediate_size, c.hidden_size, "col"),
        "down_proj": (c.hidden_size, c.intermediate_size, "row"),
        "lm_head": (c.vocab_size, c.hidden_size, "col"),
    }
    return {name: (n // tp_size, k) if split == "col" else (n, k // tp_size)
            for name, (n, k, split) in full.items()}


def tune_gemms(model_config, dtype: torch.dtype, batch_buckets: list[int], device="cuda",
               candidates: list[str] | None = None, time_budget_s: float = 30.0, tp_size: int = 1) -> Table:
    """{name: {str(M): winning tactic}}; see tune_gemms_with_timings."""
    return tune_gemms_with_timings(model_config, dtype, batch_buckets, device, candidates,
                                   time_budget_s, tp_size)[0]


def tune_gemms_with_timings(model_config, dtype: torch.dtype, batch_buckets: list[int], device="cuda",
                            candidates: list[str] | None = None, time_budget_s: float = 30.0,
                            tp_size: int = 1, names: tuple[str, ...] = GEMM_NAMES) -> tuple[Table, Timings]:
    """Time every candidate for every GEMM of one rank at every M in batch_buckets, on random
    weights of the real shape (median device time, CUDA events); return the winners and the
    timings in microseconds. Compiling the Triton configs counts against time_budget_s; once it
    is spent the remaining pairs fall back to cuBLAS (or the best measured so far)."""
    from ingot.tactics.timing import GemmBench

    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"GEMM tactics are tuned on a CUDA device, got {device}")
    for tactic in candidates or []:
        validate(tactic)
    start = time.monotonic()
    shapes = gemm_shapes(model_config, tp_size)
    candidates_for = (lambda m: list(candidates)) if candidates is not None else default_candidates
    triton_names = sorted({t for m in batch_buckets for t in candidates_for(m) if t.startswith("triton:")})
    benches: dict[str, GemmBench] = {}
    current: dict[str, int] = {}

    def measure(name: str, m: int, tactic: str) -> float:
        if name not in benches:
            benches.clear()  # one shape's weights at a time: lm_head alone is 1 GB in bf16
            benches[name] = GemmBench(*shapes[name], dtype, device)
            _precompile(triton_names, benches[name].weights[0])
        if current.get(name) != m:
            benches[name].set_batch(m)
            current[name] = m
        return benches[name].time_us(linear_fn(tactic))

    budget_left = time_budget_s - (time.monotonic() - start)
    result = run_tuning(list(names), batch_buckets, candidates_for, measure, budget_left)
    benches.clear()
    torch.cuda.empty_cache()
    return result


def _precompile(tactics: list[str], weight: torch.Tensor) -> None:
    """Compile this shape's Triton configs in parallel before timing them one by one. Shapes
    whose N and K share Triton's specialisation (all multiples of 16) reuse the first compiles."""
    if not tactics:
        return
    from ingot.kernels.gemm import GemmConfig, precompile

    try:
        precompile([GemmConfig.parse(t) for t in tactics], weight)
    except Exception as exc:  # only an optimisation: the first timed call compiles instead
        logging.getLogger(__name__).warning("parallel Triton precompile failed (%s); compiling serially", exc)
