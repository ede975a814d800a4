"""Before/after on one card in one call: bench/llama8b_gpu.sh on a baseline source tree and on this
one, each writing its own `ingot bench` records (same-run ceilings, floors and ratios included),
and one record that sets the two side by side.

    git archive BASE_COMMIT | (mkdir -p .baseline && tar -x -C .baseline)       # on the dev machine
    INGOT_COMMIT=HEAD_COMMIT python bench/before_after.py --baseline .baseline \
        --baseline-commit BASE_COMMIT --num-requests 3000 --out DIR

The baseline must have bench/llama8b_gpu.sh (commits from 2026-12-01 on). Each tree runs its
steps (`build latency tput:128:128:N`) in its own processes, one tree after the other, so the two
engines never share GPU memory. Writes DIR/{before,after}/*.json (the trees' own records) and
DIR/DATE-h200-llama8b-before-after.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from benchlib import record_header, write_record

HERE = Path(__file__).resolve().parent


def run_tree(tree: Path, commit: str, steps: list[str], out: Path) -> dict:
    """Run bench/llama8b_gpu.sh STEPS inside `tree`; return {record file stem: record}."""
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONUNBUFFERED": "1", "INGOT_COMMIT": commit,
           "INGOT_BENCH_ENGINE": f"/tmp/ingot-engines/before-after-{out.name}"}
    subprocess.run(["bash", "bench/llama8b_gpu.sh", str(out), *steps], cwd=tree, env=env, check=True)
    return {path.stem: json.loads(path.read_text()) for path in sorted(out.glob("*.json"))}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", required=True, type=Path, help="source tree of the baseline commit")
    parser.add_argument("--baseline-commit", required=True)
    parser.add_argument("--num-requests", type=int, default=3000)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    steps = ["build", "latency", f"tput:128:128:{args.num_requests}"]
    header = record_header()
    runs = {"before": run_tree(args.baseline.resolve(), args.baseline_commit, steps, args.out / "before"),
            "after": run_tree(HERE.parent, header["commit"], steps, args.out / "after")}
    figures = {"decode_tok_s": "latency-b1-128-128", "decode_floor_ratio": "latency-b1-128-128",
               "output_tok_s": f"throughput-128-128-{args.num_requests}",
               "compute_ceiling_ratio": f"throughput-128-128-{args.num_requests}"}
    side_by_side = {name: {label: runs[label][stem][name] for label in runs} for name, stem in figures.items()}
    for name, values in side_by_side.items():
        values["after_over_before"] = round(values["after"] / values["before"], 4)
    record = {**header, "device": runs["after"][figures["decode_tok_s"]]["device"],
              "baseline_commit": args.baseline_commit, "steps": steps, "figures": side_by_side,
              "records": {label: sorted(run) for label, run in runs.items()}}
    write_record(args.out / f"{header['date'][:10]}-h200-llama8b-before-after.json", record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
