"""Offline throughput of SmolLM2-135M on this CPU: ingot in-flight batching vs transformers'
continuous batching (`generate_batch`), same requests, same run.

    python bench/smollm2_cpu_throughput.py [--num-requests 64] [--isl 128] [--osl 128] [--out bench/results]

All requests are submitted at once; greedy; EOS ignored so each makes exactly osl tokens.
output tok/s = num_requests * osl / wall time (prompt processing included, as trtllm-bench does).
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import torch
from benchlib import record_header, write_record


def ingot_throughput(engine_dir: Path, prompts: list[list[int]], osl: int) -> float:
    from ingot.bench.offline import _warm_up
    from ingot.runtime.engine import LLMEngine
    from ingot.sampling_params import SamplingParams

    engine = LLMEngine(engine_dir, device="cpu")
    _warm_up(engine)
    started = time.perf_counter()
    for prompt in prompts:
        engine.add_request(prompt, SamplingParams(max_tokens=osl, temperature=0.0, ignore_eos=True))
    while engine.has_unfinished_requests():
        engine.step()
    return len(prompts) * osl / (time.perf_counter() - started)


def transformers_throughput(gguf: Path, prompts: list[list[int]], osl: int) -> float:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                              dtype=torch.float32).eval()
    config = transformers.GenerationConfig(max_new_tokens=osl, min_new_tokens=osl, do_sample=False,
                                           eos_token_id=None, pad_token_id=0)
    model.generate_batch(prompts[:2], generation_config=config)  # warm-up
    started = time.perf_counter()
    outputs = model.generate_batch(prompts, generation_config=config)
    elapsed = time.perf_counter() - started
    generated = sum(len(o.generated_tokens) for o in outputs.values())
    return generated / elapsed


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--isl", type=int, default=128)
    parser.add_argument("--osl", type=int, default=128)
    parser.add_argument("--engine", default="/tmp/ingot-bench/smollm2-b64")
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--peer-requests", type=int, default=None,
                        help="run the peer on only this many of the requests (it can be very slow on CPU)")
    args = parser.parse_args()

    from ingot.builder.build import build_engine
    from ingot.builder.presets import resolve_preset
    from ingot.config import BuildConfig

    build_engine("smollm2", args.engine, BuildConfig(max_batch_size=args.num_requests, max_seq_len=1024),
                 device="cpu")
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(100, 40000, (args.isl,), generator=g).tolist() for _ in range(args.num_requests)]
    ours = ingot_throughput(Path(args.engine), prompts, args.osl)
    print(f"ingot: {ours:.1f} output tok/s", flush=True)
    try:
        peer_prompts = prompts[: args.peer_requests or args.num_requests]
        peer, peer_error = transformers_throughput(resolve_preset("smollm2"), peer_prompts, args.osl), None
    except Exception as exc:  # recorded, not hidden: the peer may not run on CPU in every version
        peer, peer_error = None, repr(exc)
    record = {
        **record_header(),
        "model": "SmolLM2-135M-Instruct (GGUF Q4_1 dequantized)", "dtype": "fp32", "quant": None,
        "isl": args.isl, "osl": args.osl, "num_requests": args.num_requests,
        "output_tok_s": round(ours, 2),
        "peer": {"name": f"transformers {__import__('transformers').__version__} generate_batch",
                 "output_tok_s": None if peer is None else round(peer, 2), "error": peer_error,
                 "num_requests": args.peer_requests or args.num_requests},
        "notes": "CPU only; no compute-ceiling ratio (the ceiling protocol is for GPUs)",
    }
    stamp = datetime.datetime.now().strftime("%H%M")
    out = Path(args.out) / f"{datetime.date.today()}-cpu-smollm2-throughput-{args.isl}-{args.osl}-{stamp}.json"
    write_record(out, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
