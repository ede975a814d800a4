"""Batch-1 decode tokens/s of SmolLM2-135M on this CPU: ingot vs transformers `generate`, same run.

    python bench/smollm2_cpu_decode.py [--isl 128] [--osl 128] [--repeats 3] [--out bench/results]

Both run fp32 on the same dequantized GGUF weights, greedy, ignoring EOS, same thread count.
Decode tok/s = (osl - 1) / (time to last token - time to first token): prompt processing is
timed separately as TTFT so the two are not mixed.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import torch
from benchlib import record_header, write_record


def ingot_run(engine_dir: Path, prompt_ids: list[int], osl: int) -> tuple[float, float]:
    from ingot import LLM, SamplingParams

    llm = LLM(engine_dir, device="cpu")
    params = SamplingParams(max_tokens=osl, temperature=0.0, ignore_eos=True)
    llm.generate([prompt_ids], SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))  # warm-up
    start = time.perf_counter()
    first = None
    for output in llm.stream(prompt_ids, params):
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    return first - start, (osl - 1) / (end - first)


def transformers_run(gguf: Path, prompt_ids: list[int], osl: int) -> tuple[float, float]:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                              dtype=torch.float32).eval()
    ids = torch.tensor([prompt_ids])
    kwargs = dict(attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=0)
    with torch.no_grad():
        model.generate(ids, max_new_tokens=4, min_new_tokens=4, **kwargs)  # warm-up
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kwargs)
        ttft = time.perf_counter() - start
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=osl, min_new_tokens=osl, **kwargs)
        total = time.perf_counter() - start
    return ttft, (osl - 1) / (total - ttft)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--isl", type=int, default=128)
    parser.add_argument("--osl", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--engine", default="/tmp/ingot-bench/smollm2")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()

    from ingot.builder.build import build_engine
    from ingot.builder.presets import resolve_preset
    from ingot.config import BuildConfig

    engine_dir = Path(args.engine)
    started = time.perf_counter()
    build_engine("smollm2", engine_dir, BuildConfig(max_batch_size=8), device="cpu")
    build_s = time.perf_counter() - started
    prompt_ids = torch.randint(100, 40000, (args.isl,), generator=torch.Generator().manual_seed(0)).tolist()
    ours = [ingot_run(engine_dir, prompt_ids, args.osl) for _ in range(args.repeats)]
    peer = [transformers_run(resolve_preset("smollm2"), prompt_ids, args.osl) for _ in range(args.repeats)]
    best = lambda runs: (min(r[0] for r in runs), max(r[1] for r in runs))  # noqa: E731
    (ttft, tok_s), (peer_ttft, peer_tok_s) = best(ours), best(peer)
    record = {
        **record_header(),
        "model": "SmolLM2-135M-Instruct (GGUF Q4_1 dequantized)", "dtype": "fp32", "quant": None,
        "isl": args.isl, "osl": args.osl, "batch_size": 1, "repeats": args.repeats,
        "decode_tok_s": round(tok_s, 2), "ttft_ms": round(ttft * 1e3, 1), "build_s": round(build_s, 2),
        "all_runs": [[round(a * 1e3, 1), round(b, 2)] for a, b in ours],
        "peer": {"name": f"transformers {__import__('transformers').__version__} generate (dynamic cache)",
                 "decode_tok_s": round(peer_tok_s, 2), "ttft_ms": round(peer_ttft * 1e3, 1),
                 "all_runs": [[round(a * 1e3, 1), round(b, 2)] for a, b in peer]},
        "notes": "best of repeats; CPU numbers only, no floor ratio (the floor protocol is for GPUs)",
    }
    out = Path(args.out) / f"{datetime.date.today()}-cpu-smollm2-decode-b1.json"
    write_record(out, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
