"""FP8 accuracy on real weights (CPU): perplexity of the unquantized model and of FP8 builds, scored
on a held-out span with ingot's own `ingot eval perplexity` windows:
    fp8_per_channel / fp8_per_tensor   W8A8 weights (per_channel: dynamic per-token activations;
                                       per_tensor: static activation scales calibrated on the first
                                       part of the text), KV cache in the model dtype
    fp8_kv                             unquantized weights, FP8 KV cache with per-layer scales
                                       calibrated on that same first part (max |k|, |v| / 448)
    fp8_kv_unit                        the same with unit scales (--kv-cache-scales unit)
    fp8_per_channel_fp8_kv             both

    python bench/fp8_accuracy_cpu.py --text ../shared/data/hamlet.md --models smollm2 --out bench/results \
        [--variants none fp8_kv ...]

Writes DATE-cpu-fp8-accuracy-hamlet-MODEL.json per model (with -COMMIT added rather than replace a
record of the same name: records are never rewritten).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from benchlib import record_header, write_record

# name: (--quant, its parameters, --kv-cache-dtype, --kv-cache-scales)
VARIANTS = {"none": ("none", {}, "auto", None), "fp8_per_channel": ("fp8", {"scaling": "per_channel"}, "auto", None),
            "fp8_per_tensor": ("fp8", {"scaling": "per_tensor"}, "auto", None),
            "fp8_kv": ("none", {}, "fp8", "calibrated"), "fp8_kv_unit": ("none", {}, "fp8", "unit"),
            "fp8_per_channel_fp8_kv": ("fp8", {"scaling": "per_channel"}, "fp8", "calibrated")}


def measure(model: str, variant: str, calib: Path, text: str, args) -> dict:
    from ingot.builder.build import build_engine
    from ingot.config import BuildConfig, QuantConfig
    from ingot.eval.perplexity import engine_perplexity
    from ingot.llm import LLM

    method, params, kv_dtype, kv_scales = VARIANTS[variant]
    if params.get("scaling") == "per_tensor" or kv_scales == "calibrated":
        params = {**params, "calib_data": str(calib), "calib_size": args.calib_size, "calib_seq_len": args.calib_seq_len}
    quant = QuantConfig(method, params, kv_dtype, kv_scales or "calibrated")
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        build_engine(model, Path(tmp) / "e", BuildConfig(dtype="fp32", max_seq_len=args.window, max_input_len=args.window,
                                                         max_batch_size=16), device="cpu", quant=quant)
        built = time.perf_counter()
        llm = LLM(Path(tmp) / "e", device="cpu")
        result = engine_perplexity(llm, llm.tokenizer.encode(text), args.window, args.stride, use_progress=False)
        llm.engine.shutdown()
        weight_bytes = sum(f.stat().st_size for f in (Path(tmp) / "e").glob("rank*.safetensors"))
        kv = {"kv_cache_dtype": llm.engine.spec.kv_dtype, "kv_bytes_per_token": llm.engine.pool_plan.bytes_per_token}
    return {"perplexity": result.perplexity, "num_scored": result.num_scored, "build_s": round(built - started, 1),
            "score_s": round(time.perf_counter() - built, 1), "engine_weight_bytes": weight_bytes, **kv}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--text", required=True)
    parser.add_argument("--models", nargs="+", default=["smollm2"])
    parser.add_argument("--calib-chars", type=int, default=60_000, help="calibrate on the text's first characters")
    parser.add_argument("--calib-size", type=int, default=8)
    parser.add_argument("--calib-seq-len", type=int, default=256)
    parser.add_argument("--eval-chars", type=int, nargs=2, default=[150_000, 156_000],
                        help="score this character span (the accuracy test's)")
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--stride", type=int, default=256)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="builds to score (default: all; the unquantized one always runs, the baseline)")
    args = parser.parse_args()
    variants = ["none", *(v for v in args.variants if v != "none")]
    header = record_header()  # once, before anything runs: the commit of the code measured
    full = Path(args.text).read_text(encoding="utf-8")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        calib = Path(tmp) / "calibration.txt"
        calib.write_text(full[:args.calib_chars], encoding="utf-8")
        text = full[args.eval_chars[0]:args.eval_chars[1]]
        for model in args.models:
            results = {variant: measure(model, variant, calib, text, args) for variant in variants}
            base = results["none"]["perplexity"]
            for variant, result in results.items():
                result["relative_to_unquantized"] = result["perplexity"] / base - 1
                print(f"{model} {variant:<16} {result['perplexity']:8.3f} {result['relative_to_unquantized']:+7.2%}")
            record = {**header, "model": model, "dtype": "fp32", "text": Path(args.text).name,
                      "calibration": {"chars": args.calib_chars, "samples": args.calib_size,
                                      "seq_len": args.calib_seq_len, "statistic": "max"},
                      "eval": {"chars": args.eval_chars, "window": args.window, "stride": args.stride},
                      "results": results}
            path = args.out / f"{header['date'][:10]}-cpu-fp8-accuracy-hamlet-{model}.json"
            if path.exists():
                path = path.with_name(f"{path.stem}-{header['commit'][:7]}.json")
            write_record(path, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
