"""Before/after on one card in one call: the same benchmark steps (bench/gpu_llama8b.py) on a
baseline source tree and on this one, with the card's ceilings measured in the same call, written
as records whose floors and ratios are computed here from raw fields (bench/floors.py).

    git archive BASE_COMMIT | (mkdir -p .baseline && tar -x -C .baseline)       # on the dev machine
    python bench/before_after.py --baseline .baseline --baseline-commit BASE_COMMIT \
        --commit HEAD_COMMIT --max-batch-size 256 --num-requests 3000 --out DIR

Each tree runs in its own process (`build:N latency tput:128:128:NUM`), one after the other, so
the two engines never share GPU memory. Writes DIR/DATE-h200-llama8b-latency-b1-before-after.json
and DIR/DATE-h200-llama8b-throughput-128-128-before-after.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch

import floors
from benchlib import cuda_seconds

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "configs" / "llama-3.1-8b.json"


def ceilings(copy_gib: int = 4, repeats: int = 10) -> dict:
    """Device-to-device copy of copy_gib GiB (read + written bytes / time) and the bf16 8192^3 matmul
    rate on random data, each the best of `repeats` after warm-up, timed by CUDA events."""
    def best_seconds(fn) -> float:
        return min(cuda_seconds(fn, repeats, warmup=2))

    src = torch.randn(copy_gib << 29, dtype=torch.bfloat16, device="cuda")  # copy_gib GiB of bf16
    dst = torch.empty_like(src)
    copy_s = best_seconds(lambda: dst.copy_(src))
    nbytes = src.numel() * src.element_size()
    del src, dst
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    mm_s = best_seconds(lambda: a @ b)
    return {"copy_tbps": round(2 * nbytes / copy_s / 1e12, 4), "matmul_tflops": round(2 * 8192**3 / mm_s / 1e12, 1),
            "copy_bytes": nbytes, "ceiling_method": f"best of {repeats} after 2 warm-up calls, CUDA events"}


def run_tree(tree: Path, steps: list[str], out: Path) -> dict:
    """Run bench/gpu_llama8b.py STEPS inside `tree`; return {step: its JSON}."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONUNBUFFERED": "1"}
    subprocess.run([sys.executable, "bench/gpu_llama8b.py", *steps, "--out", str(out)], cwd=tree, env=env, check=True)
    return {step: json.loads((out / f"{step.replace(':', '_')}.json").read_text()) for step in steps}


def latency_figures(result: dict, copy_tbps: float, hf: dict) -> dict:
    runs = [r["decode_tok_s"] for r in result["runs"]]
    step_bytes = floors.decode_step_bytes(hf, 1, floors.decode_mean_context(result["isl"], result["osl"]))
    floor = copy_tbps * 1e12 / step_bytes["total"]
    median = statistics.median(runs)
    return {"decode_tok_s": round(median, 1), "decode_tok_s_runs": [round(r, 1) for r in runs],
            "ttft_ms_runs": [round(r["ttft_ms"], 2) for r in result["runs"]],
            "decode_step_bytes": step_bytes, "decode_floor_tok_s": round(floor, 1),
            "decode_floor_ratio": round(median / floor, 4),
            "load_to_first_token_s": round(result["load_to_first_token_s"], 2)}


def throughput_figures(result: dict, matmul_tflops: float, hf: dict) -> dict:
    flops = floors.flops_per_output_token(hf, result["isl"], result["osl"])
    ceiling = matmul_tflops * 1e12 / flops
    return {"output_tok_s": round(result["output_tok_s"], 1), "elapsed_s": round(result["elapsed_s"], 2),
            "preemptions": result["preemptions"], "steps": result["steps"], "kv_cache_tokens": result["kv_cache_tokens"],
            "flops_per_output_token": round(flops), "compute_ceiling_tok_s": round(ceiling, 1),
            "compute_ceiling_ratio": round(result["output_tok_s"] / ceiling, 4)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", required=True, type=Path, help="source tree of the baseline commit")
    parser.add_argument("--baseline-commit", required=True)
    parser.add_argument("--commit", default=None, help="this tree's commit (default: git rev-parse HEAD)")
    parser.add_argument("--max-batch-size", type=int, default=256)
    parser.add_argument("--num-requests", type=int, default=3000)
    parser.add_argument("--label", default="before-after", help="the records' name suffix")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    commit = args.commit or subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    hf = json.loads(CONFIG.read_text())
    limits = ceilings()
    print("ceilings", limits, flush=True)
    steps = [f"build:{args.max_batch_size}", "latency", f"tput:128:128:{args.num_requests}"]
    runs = {label: run_tree(tree, steps, Path("/tmp/before-after") / label)
            for label, tree in (("before", args.baseline.resolve()), ("after", HERE.parent))}
    header = {"device": torch.cuda.get_device_name(), "commit": commit, "command": " ".join(["python", *sys.argv]),
              "date": datetime.date.today().isoformat(),
              "model": "Llama-3.1-8B shape (bench/configs/llama-3.1-8b.json), random weights (--load-format dummy)",
              "model_preset": "llama-3.1-8b", "dtype": "bf16", "quant": None, "max_batch_size": args.max_batch_size,
              **limits, "peer": None,
              "peer_not_run": "this call compares ingot before and after a change (the baseline commit below); "
                              "transformers was not run in it",
              "baseline_commit": args.baseline_commit}
    build = {label: round(r[steps[0]]["build_s"], 1) for label, r in runs.items()}
    latency = {label: latency_figures(r["latency"], limits["copy_tbps"], hf) for label, r in runs.items()}
    tput = {label: throughput_figures(r[steps[2]], limits["matmul_tflops"], hf) for label, r in runs.items()}
    date = header["date"]
    records = {
        f"{date}-h200-llama8b-latency-b1-{args.label}.json": {
            **header, "isl": 128, "osl": 128, "batch_size": 1, **latency["after"], "build_s": build["after"],
            "before": {**latency["before"], "build_s": build["before"]},
            "after_over_before": round(latency["after"]["decode_tok_s"] / latency["before"]["decode_tok_s"], 4)},
        f"{date}-h200-llama8b-throughput-128-128-{args.label}.json": {
            **header, "isl": 128, "osl": 128, "num_requests": args.num_requests, **tput["after"],
            "before": tput["before"],
            "after_over_before": round(tput["after"]["output_tok_s"] / tput["before"]["output_tok_s"], 4)},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for name, record in records.items():
        (args.out / name).write_text(json.dumps(record, indent=2) + "\n")
        print(name, json.dumps({k: v for k, v in record.items() if k not in ("decode_step_bytes",)})[:1200], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
