"""Perplexity of real checkpoints on Hamlet, ingot against transformers on the same weights, tokens
and windows (the figures quantized builds are judged by). CPU; fp32 and bf16.

    python bench/perplexity_cpu.py --text ../shared/data/hamlet.md --models smollm2 qwen2.5-coder-0.5b \
        --dtypes fp32 bf16 --window 1024 --stride 512 --from-fraction 0.75 --out bench/results

The evaluation part is the text from --from-fraction of its characters to the end (the last quarter
by default): the earlier part is left for calibrating quantized builds, so a quantized model is
never judged on the tokens it was calibrated on. Writes one record per model and dtype:
DATE-cpu-perplexity-hamlet-MODEL-DTYPE.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from benchlib import record_header, write_record


def measure(model: str, dtype: str, text: str, window: int, stride: int) -> dict:
    from ingot.builder.build import build_engine
    from ingot.config import BuildConfig
    from ingot.eval.perplexity import engine_perplexity
    from ingot.eval.reference import load_transformers_model, transformers_perplexity
    from ingot.llm import LLM

    with tempfile.TemporaryDirectory() as tmp:
        engine_dir = Path(tmp) / "engine"
        started = time.perf_counter()
        build_engine(model, engine_dir, BuildConfig(dtype=dtype, max_seq_len=window, max_input_len=window,
                                                    max_num_tokens=2048, max_batch_size=16), device="cpu")
        llm = LLM(engine_dir, device="cpu")
        token_ids = llm.tokenizer.encode(text)
        built = time.perf_counter()
        ours = engine_perplexity(llm, token_ids, window, stride, use_progress=False)
        scored = time.perf_counter()
    theirs = transformers_perplexity(load_transformers_model(model, dtype), token_ids, window, stride)
    done = time.perf_counter()
    import transformers

    return {"model": model, "dtype": dtype, "quant": None, "window": window, "stride": stride,
            "num_tokens": len(token_ids), "num_scored": ours.num_scored, "num_windows": ours.num_windows,
            "perplexity": ours.perplexity, "nll_sum": ours.nll_sum,
            "peer": {"name": f"transformers {transformers.__version__} (GGUF dequantized by transformers, "
                             f"{dtype}, same tokens and windows)",
                     "perplexity": theirs.perplexity, "nll_sum": theirs.nll_sum},
            "relative_difference": ours.perplexity / theirs.perplexity - 1,
            "seconds": {"build": round(built - started, 1), "ingot_scoring": round(scored - built, 1),
                        "transformers": round(done - scored, 1)}}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--text", required=True)
    parser.add_argument("--models", nargs="+", default=["smollm2", "qwen2.5-coder-0.5b"])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--stride", type=int, default=512)
    parser.add_argument("--from-fraction", type=float, default=0.75,
                        help="evaluate the text from this fraction of its characters to the end")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    full = Path(args.text).read_text(encoding="utf-8")
    text = full[int(len(full) * args.from_fraction):]
    args.out.mkdir(parents=True, exist_ok=True)
    header = record_header()  # once, before anything runs: the commit of the code measured
    for model in args.models:
        for dtype in args.dtypes:
            record = {**header, "text": Path(args.text).name, "text_from_fraction": args.from_fraction,
                      "text_chars": len(text),
                      **measure(model, dtype, text, args.window, args.stride)}
            name = f"{record['date'][:10]}-cpu-perplexity-hamlet-{model}-{dtype}.json"
            write_record(args.out / name, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
