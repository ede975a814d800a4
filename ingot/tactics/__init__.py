"""GEMM tactics: which implementation (cuBLAS or a Triton configuration) runs each matmul.

Run time (light; what linear methods import):
    candidates.py  tactic names -> callables (linear_fn), validation
    table.py       pick / TacticTable: a layer's {token bucket: tactic} resolved at load
Build time (the builder and benchmarks import these; the runtime never does):
    gemm_tuning.py time every candidate per GEMM shape and bucket on the target GPU
    tune.py        the tuning loop's bookkeeping, tested on CPU with a fake timer
    timing.py      CUDA-event timing of one GEMM
"""

from __future__ import annotations

from ingot.tactics.candidates import CUBLAS, linear_fn, validate
from ingot.tactics.table import TacticTable, dense_linear, pick

__all__ = ["CUBLAS", "TacticTable", "dense_linear", "linear_fn", "pick", "validate"]
