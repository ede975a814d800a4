"""Hold the planner to ingot's own measurements in bench/results/*.json.

A record (fields per shared/BENCHMARKS.md) is compared when the planner can describe it:
its `device` is in the GPU table, its `model_preset` (else `model`) resolves (preset, or config
path relative to the repo or shared/), its dtype/quant is a planner precision, and it has isl, osl and a
figure: `decode_tok_s` (decode tokens per second, all sequences together) or `output_tok_s`
(offline output tokens per second). Concurrency is batch_size, else concurrency, else
min(num_requests, max_batch_size); the layout is tp x pp (x ep) when recorded, else one GPU.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingot.config import normalize_dtype
from ingot.errors import ConfigError
from ingot.plan.gpus import gpu_from_device_name
from ingot.plan.planner import make_plan

# The planner is a roofline times named efficiency factors, not a simulator: within 50% of
# a measurement catches a wrong formula (2x off: a missed TP split, KV counted twice, wrong
# bytes per weight) while leaving room for kernel quality. Tighten as results accumulate.
TOLERANCE = 0.50
FIGURES = ("decode_tok_s", "output_tok_s")


@dataclass(frozen=True)
class Comparison:
    file: str
    figure: str
    device: str
    model: str
    precision: str
    layout: str
    isl: int
    osl: int
    concurrency: int
    measured: float
    predicted: float

    @property
    def rel_error(self) -> float:
        """(predicted - measured) / measured."""
        return (self.predicted - self.measured) / self.measured

    @property
    def ok(self) -> bool:
        return abs(self.rel_error) <= TOLERANCE


def _precision(record: dict[str, Any]) -> str:
    quant = str(record.get("quant") or "").lower()
    if quant and quant not in ("none", "null", "no"):
        return quant
    return normalize_dtype(record.get("dtype") or "bf16")


def _concurrency(record: dict[str, Any]) -> int:
    for key in ("batch_size", "concurrency"):
        if record.get(key):
            return int(record[key])
    requests = int(record.get("num_requests") or 0)
    return min(requests, int(record.get("max_batch_size") or requests)) if requests else 0


def compare_record(path: Path, record: dict[str, Any], search_dirs: tuple[Path, ...]) -> list[Comparison]:
    """Comparisons for one record; raises ValueError with the reason it cannot be compared."""
    figures = [f for f in FIGURES if isinstance(record.get(f), (int, float)) and record[f] > 0]
    if not figures:
        raise ValueError(f"no {' or '.join(FIGURES)}")
    gpu = gpu_from_device_name(str(record.get("device", "")))
    if gpu is None:
        raise ValueError(f"device {record.get('device')!r} is not in the GPU table")
    tp, pp, ep = (int(record.get(k) or 1) for k in ("tp", "pp", "ep"))
    concurrency = _concurrency(record)
    try:
        plan = make_plan(model=str(record.get("model_preset") or record.get("model", "")), gpu=gpu.key, precision=_precision(record),
                         kv_cache_dtype=record.get("kv_cache_dtype"), isl=record.get("isl"),
                         osl=record.get("osl"), concurrency=concurrency, num_gpus=tp * pp,
                         search_dirs=search_dirs)
    except ConfigError as exc:
        raise ValueError(f"planner cannot describe it: {exc}") from None
    row = next((r for r in plan["layouts"] if (r["tp"], r["pp"], r["ep"]) == (tp, pp, ep)), None)
    if row is None:
        raise ValueError(f"layout tp={tp} pp={pp} ep={ep} is not one the planner considers")
    return [Comparison(file=path.name, figure=f, device=gpu.key, model=plan["model"]["name"],
                       precision=plan["precision"]["name"], layout=row["layout"], isl=record["isl"],
                       osl=record["osl"], concurrency=concurrency, measured=float(record[f]),
                       predicted=float(row["perf"][f]) if row["perf"] else 0.0)
            for f in figures]


def compare_results(results_dir: Path, search_dirs: tuple[Path, ...] = ()
                    ) -> tuple[list[Comparison], list[tuple[str, str]]]:
    """Every *.json under results_dir -> (comparisons, [(file, why skipped)])."""
    comparisons: list[Comparison] = []
    skipped: list[tuple[str, str]] = []
    for path in sorted(results_dir.glob("*.json")):
        try:
            record = json.loads(path.read_text())
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
            comparisons += compare_record(path, record, search_dirs)
        except (ValueError, OSError) as exc:  # JSONDecodeError is a ValueError
            skipped.append((path.name, str(exc)))
    return comparisons, skipped


def format_table(comparisons: list[Comparison], skipped: list[tuple[str, str]]) -> str:
    lines = [f"planner vs bench/results (tolerance +-{TOLERANCE:.0%} relative error)"]
    if not comparisons:
        lines.append("  no result records a decode or throughput figure for a configuration the "
                     "planner can describe: nothing to compare yet")
    else:
        lines.append(f"  {'file':36} {'figure':13} {'device':9} {'model':16} {'prec':8} {'layout':12} "
                     f"{'isl/osl':>11} {'conc':>5} {'measured':>10} {'predicted':>10} {'error':>7}")
    for c in comparisons:
        flag = "" if c.ok else "  << out of tolerance"
        lines.append(f"  {c.file[:36]:36} {c.figure:13} {c.device:9} {c.model[:16]:16} {c.precision:8} "
                     f"{c.layout:12} {f'{c.isl}/{c.osl}':>11} {c.concurrency:>5} {c.measured:>10,.1f} "
                     f"{c.predicted:>10,.1f} {c.rel_error:>+7.0%}{flag}")
    lines += [f"  skipped {name}: {why}" for name, why in skipped]
    return "\n".join(lines)
