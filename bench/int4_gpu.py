"""INT4 weight-only engines end to end on the Llama-3.1-8B shape (random weights, one GPU): the build
(quantization included) is timed, then batch-1 decode at ISL/OSL 128/128 against the bf16 engine
of the same shape, each with its decode floor (bytes a step reads: floors.int4_decode_step_bytes)
and the same-run ceilings.

    python bench/int4_gpu.py --out DIR [--methods int4_rtn int4_awq int4_gptq] [--calib-size N]

With random weights AWQ and GPTQ calibrate on random token ids (the builder's dummy path): the
time is representative of the algorithm's work, the accuracy is not (bench/int4_accuracy_cpu.py
measures accuracy on real weights). Writes DIR/DATE-h200-llama8b-int4-latency-b1.json.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import random
import sys
import time
from pathlib import Path

import torch
from benchlib import record_header, write_record
from floors import decode_mean_context, decode_step_bytes, int4_decode_step_bytes
from gpu_llama8b import CONFIG, ceilings

GROUP = 128
ISL, OSL = 128, 128


def build(method: str, calib_size: int) -> tuple[Path, float]:
    from ingot.builder.build import build_engine
    from ingot.config import BuildConfig, QuantConfig

    directory = Path(f"/tmp/ingot-engines/llama-3.1-8b-{method}")
    params = {} if method == "none" else {"group_size": GROUP}
    if method in ("int4_awq", "int4_gptq"):
        params.update(calib_size=calib_size, calib_seq_len=512)
    torch.cuda.synchronize()
    started = time.perf_counter()
    build_engine(str(CONFIG), directory, BuildConfig(dtype="bf16", max_batch_size=8, max_seq_len=1024, max_input_len=512,
                                                     max_num_tokens=2048), device="cuda", load_format="dummy",
                 quant=QuantConfig(method, params))
    return directory, time.perf_counter() - started


def decode_latency(directory: Path, repeats: int = 5) -> dict:
    from ingot.config import CacheConfig
    from ingot.runtime.engine import LLMEngine
    from ingot.sampling_params import SamplingParams

    engine = LLMEngine(directory, CacheConfig(gpu_memory_fraction=0.5), device="cuda")
    rng = random.Random(0)
    speeds = []
    for repeat in range(repeats + 1):
        engine.add_request([rng.randrange(128000) for _ in range(ISL)],
                           SamplingParams(max_tokens=OSL, temperature=0.0, ignore_eos=True))
        engine.step()  # the prompt and the first token
        torch.cuda.synchronize()
        started = time.perf_counter()
        while engine.has_unfinished_requests():
            engine.step()
        if repeat:  # the first run warms up
            speeds.append((OSL - 1) / (time.perf_counter() - started))
    del engine
    gc.collect()
    torch.cuda.empty_cache()
    return {"decode_tok_s": sorted(speeds)[len(speeds) // 2], "runs": speeds}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--methods", nargs="+", default=["none", "int4_rtn"])
    parser.add_argument("--calib-size", type=int, default=128)
    args = parser.parse_args()
    header = record_header(torch.cuda.get_device_name())
    ceiling = ceilings()
    hf = json.loads(CONFIG.read_text())
    context = decode_mean_context(ISL, OSL)
    results = {}
    for method in args.methods:
        directory, build_s = build(method, args.calib_size)
        measured = decode_latency(directory)
        step = decode_step_bytes(hf, 1, context) if method == "none" else int4_decode_step_bytes(hf, 1, context, GROUP)
        floor = ceiling["copy_tbps"] * 1e12 / step["total"]
        results[method] = {"build_s": build_s, **measured, "decode_step_bytes": step["total"],
                           "decode_floor_tok_s": floor, "decode_floor_ratio": measured["decode_tok_s"] / floor}
        print(method, json.dumps(results[method]), flush=True)
    record = {**header, "model": "llama-3.1-8b (random weights)", "dtype": "bf16", "quant": f"int4 g{GROUP} vs none",
              "isl": ISL, "osl": OSL, "batch_size": 1, "calib_size": args.calib_size,
              "copy_tbps": ceiling["copy_tbps"], "matmul_tflops": ceiling["matmul_tflops"], "by_method": results}
    if "none" in results:
        for method, result in results.items():
            result["speedup_vs_bf16"] = result["decode_tok_s"] / results["none"]["decode_tok_s"]
    args.out.mkdir(parents=True, exist_ok=True)
    write_record(args.out / f"{datetime.date.today()}-h200-llama8b-int4-latency-b1.json", record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
