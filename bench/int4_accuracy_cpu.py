"""INT4 accuracy on real weights (CPU): perplexity of the unquantized model and of RTN, AWQ and GPTQ
builds at one group size, calibrated on the first part of a text and scored on its last quarter
(never the same tokens), ingot's own `ingot eval perplexity` windows.

    python bench/int4_accuracy_cpu.py --text ../shared/data/hamlet.md --models qwen2.5-coder-0.5b smollm2 \
        --group-size 128 --calib-size 32 --calib-seq-len 512 --out bench/results

Writes DATE-cpu-int4-accuracy-hamlet-MODEL.json per model.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from benchlib import record_header, write_record

METHODS = ("none", "int4_rtn", "int4_awq", "int4_gptq")


def measure(model: str, method: str, calib: Path, text: str, args) -> dict:
    from ingot.builder.build import build_engine
    from ingot.config import BuildConfig, QuantConfig
    from ingot.eval.perplexity import engine_perplexity
    from ingot.llm import LLM

    params = {} if method == "none" else {"group_size": args.group_size}
    if method in ("int4_awq", "int4_gptq"):
        params.update(calib_data=str(calib), calib_size=args.calib_size, calib_seq_len=args.calib_seq_len)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        build_engine(model, Path(tmp) / "e", BuildConfig(dtype="fp32", max_seq_len=args.window, max_input_len=args.window,
                                                         max_batch_size=16), device="cpu", quant=QuantConfig(method, params))
        built = time.perf_counter()
        llm = LLM(Path(tmp) / "e", device="cpu")
        result = engine_perplexity(llm, llm.tokenizer.encode(text), args.window, args.stride, use_progress=False)
        weight_bytes = sum(f.stat().st_size for f in (Path(tmp) / "e").glob("rank*.safetensors"))
    return {"perplexity": result.perplexity, "num_scored": result.num_scored, "build_s": round(built - started, 1),
            "score_s": round(time.perf_counter() - built, 1), "engine_weight_bytes": weight_bytes}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--text", required=True)
    parser.add_argument("--models", nargs="+", default=["qwen2.5-coder-0.5b", "smollm2"])
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--calib-size", type=int, default=32)
    parser.add_argument("--calib-seq-len", type=int, default=512)
    parser.add_argument("--calib-fraction", type=float, default=0.4, help="calibrate on this first part of the text")
    parser.add_argument("--eval-from", type=float, default=0.75, help="score from this fraction to the end")
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--stride", type=int, default=512)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    header = record_header()  # once, before anything runs: the commit of the code measured
    full = Path(args.text).read_text(encoding="utf-8")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        calib = Path(tmp) / "calibration.txt"
        calib.write_text(full[: int(len(full) * args.calib_fraction)], encoding="utf-8")
        text = full[int(len(full) * args.eval_from):]
        for model in args.models:
            results = {method: measure(model, method, calib, text, args) for method in METHODS}
            base = results["none"]["perplexity"]
            for result in results.values():
                result["relative_to_unquantized"] = result["perplexity"] / base - 1
            record = {**header, "model": model, "dtype": "fp32", "text": Path(args.text).name,
                      "calibration": {"text_fraction": args.calib_fraction, "samples": args.calib_size,
                                      "seq_len": args.calib_seq_len},
                      "eval": {"text_from_fraction": args.eval_from, "window": args.window, "stride": args.stride},
                      "group_size": args.group_size, "results": results}
            write_record(args.out / f"{header['date'][:10]}-cpu-int4-accuracy-hamlet-{model}.json", record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
