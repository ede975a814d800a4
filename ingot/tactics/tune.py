"""The tuning loop: for every GEMM and batch bucket, time the candidates and keep the fastest.

The loop is plain Python over an injected `measure` function, so that its bookkeeping (budget,
failures, ties, the record) is tested on the CPU with a fake timer; tune_gemms_with_timings
wires it to CUDA events (ingot/tactics/timing.py).
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from ingot.tactics.candidates import CUBLAS

log = logging.getLogger(__name__)

Table = dict[str, dict[str, str]]  # name -> str(M) -> tactic
Timings = dict[str, dict[str, dict[str, float]]]  # name -> str(M) -> tactic -> microseconds
# measure(name, m, tactic) -> microseconds; raises when the tactic fails or computes wrongly.
Measure = Callable[[str, int, str], float]


def run_tuning(names: list[str], buckets: list[int], candidates_for: Callable[[int], list[str]],
               measure: Measure, time_budget_s: float,
               clock: Callable[[], float] = time.monotonic) -> tuple[Table, Timings]:
    """Winners and the timings behind them. Once the budget is spent nothing more is measured:
    the remaining (name, M) pairs get the best of what was measured, else "cublas"."""
    deadline = clock() + time_budget_s
    table: Table = {name: {} for name in names}
    timings: Timings = {name: {} for name in names}
    for name in names:
        for m in sorted(set(buckets)):
            results: dict[str, float] = {}
            for tactic in candidates_for(m):
                if clock() >= deadline:
                    break
                try:
                    results[tactic] = float(measure(name, m, tactic))
                except Exception as exc:  # a config that does not fit this GPU or shape loses, it does not stop the build
                    log.info("tactic %s for %s at M=%d failed: %s", tactic, name, m, exc)
            table[name][str(m)] = min(results, key=results.__getitem__) if results else CUBLAS
            timings[name][str(m)] = results
    return table, timings
