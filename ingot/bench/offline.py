"""Offline benchmarks of an engine, like trtllm-bench:

    ingot bench throughput ENGINE --isl 128 --osl 128 --num-requests 1000 [--random-lengths] [--json OUT]
    ingot bench latency    ENGINE --isl 128 --osl 128 --batch-size 1 [--repeats 3] [--json OUT]

throughput: every request is submitted at once and the engine runs until all finish;
            output tok/s = generated tokens / wall time.
latency:    a batch of identical-shape requests, timed per step: TTFT = time to the first
            token, decode tok/s = tokens per sequence after the first / time after the first.
Prompts are random token ids (no prefix can be shared), EOS is ignored so every request
generates exactly its output length.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from dataclasses import dataclass


def register(sub) -> None:
    for name, func, help_text in (("throughput", run_throughput, "offline throughput: all requests at once"),
                                  ("latency", run_latency, "batch latency: TTFT and decode speed")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("engine")
        p.add_argument("--isl", type=int, default=128, help="input (prompt) length in tokens")
        p.add_argument("--osl", type=int, default=128, help="output length in tokens")
        p.add_argument("--device", default=None)
        p.add_argument("--draft-engine", default=None, metavar="DIR",
                       help="the draft model's engine, for a target built with --speculative draft_target")
        p.add_argument("--skip-verify", action="store_true",
                       help="load the weights without checking their checksums (trusted engines, faster start)")
        p.add_argument("--attention-backend", default=None, choices=["torch", "triton"],
                       help="default: triton on CUDA, torch on CPU")
        p.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs")
        p.add_argument("--kv-fraction", type=float, default=0.9, help="fraction of GPU memory for the engine")
        p.add_argument("--max-cache-bytes", type=int, default=None, help="cap on KV cache bytes (CPU default 1 GiB)")
        p.add_argument("--policy", default="max_utilization", choices=["max_utilization", "guaranteed_no_evict"])
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--json", metavar="OUT", help="also write the result as JSON to this file")
        if name == "throughput":
            p.add_argument("--num-requests", type=int, default=256)
            p.add_argument("--random-lengths", action="store_true",
                           help="draw each request's lengths uniformly from [len/2, len*3/2]")
        else:
            p.add_argument("--batch-size", type=int, default=1)
            p.add_argument("--repeats", type=int, default=3)
        p.set_defaults(func=func)


@dataclass
class Workload:
    prompts: list[list[int]]
    output_lens: list[int]


def make_workload(num: int, isl: int, osl: int, vocab: int, seed: int, random_lengths: bool = False) -> Workload:
    rng = random.Random(seed)
    scale = (lambda n: rng.randint(max(1, n // 2), max(1, n * 3 // 2))) if random_lengths else (lambda n: n)
    prompts = [[rng.randrange(vocab) for _ in range(scale(isl))] for _ in range(num)]
    return Workload(prompts, [scale(osl) for _ in range(num)])


def open_engine(args):
    from ingot.engine_format import read_spec
    from ingot.config import CacheConfig, SchedulerConfig
    from ingot.runtime.engine import LLMEngine

    if args.skip_verify:
        from ingot.envs import set_skip_verify

        set_skip_verify()
    spec = read_spec(args.engine)
    cache = CacheConfig(gpu_memory_fraction=args.kv_fraction, max_cache_bytes=args.max_cache_bytes,
                        enable_prefix_caching=False)
    return LLMEngine(args.engine, cache, device=args.device, attention_backend=args.attention_backend or "auto",
                     scheduler_config=SchedulerConfig.for_engine(spec.build, args.policy),
                     enforce_eager=args.enforce_eager, draft_engine=args.draft_engine)


def run_throughput(args: argparse.Namespace) -> int:
    from ingot.sampling_params import SamplingParams

    engine = open_engine(args)
    work = make_workload(args.num_requests, args.isl, args.osl, engine.spec.model.vocab_size, args.seed,
                         args.random_lengths)
    _warm_up(engine)
    started = time.perf_counter()
    for prompt, osl in zip(work.prompts, work.output_lens):
        engine.add_request(prompt, SamplingParams(max_tokens=osl, temperature=0.0, ignore_eos=True))
    peak_running = 0
    while engine.has_unfinished_requests():
        engine.step()
        peak_running = max(peak_running, engine.stats.running)
    elapsed = time.perf_counter() - started
    output_tokens, input_tokens = sum(work.output_lens), sum(map(len, work.prompts))
    result = {
        "benchmark": "throughput", **_common(engine, args), "num_requests": args.num_requests,
        "random_lengths": args.random_lengths, "elapsed_s": round(elapsed, 3),
        "request_per_s": round(args.num_requests / elapsed, 3),
        "output_tok_s": round(output_tokens / elapsed, 2), "input_tok_s": round(input_tokens / elapsed, 2),
        "total_tok_s": round((input_tokens + output_tokens) / elapsed, 2),
        "peak_running": peak_running, "preemptions": engine.stats.preempted_total,
        "steps": engine.stats.num_steps,
    }
    return _report(result, args.json)


def run_latency(args: argparse.Namespace) -> int:
    from ingot.sampling_params import SamplingParams

    engine = open_engine(args)
    work = make_workload(args.batch_size, args.isl, args.osl, engine.spec.model.vocab_size, args.seed)
    _warm_up(engine)
    runs = []
    for _ in range(args.repeats):
        params = SamplingParams(max_tokens=args.osl, temperature=0.0, ignore_eos=True)
        started = time.perf_counter()
        for prompt in work.prompts:
            engine.add_request(prompt, params)
        first = None
        while engine.has_unfinished_requests():
            engine.step()
            first = first or time.perf_counter()
        end = time.perf_counter()
        runs.append((first - started, end - started, (args.osl - 1) / max(end - first, 1e-9)))
    ttft, e2e, decode = (statistics.median(r[i] for r in runs) for i in range(3))
    result = {
        "benchmark": "latency", **_common(engine, args), "batch_size": args.batch_size, "repeats": args.repeats,
        "ttft_ms": round(ttft * 1e3, 2), "e2e_ms": round(e2e * 1e3, 2),
        "tpot_ms": round(1e3 / decode, 3), "decode_tok_s": round(decode, 2),
        "decode_tok_s_total": round(decode * args.batch_size, 2),
    }
    return _report(result, args.json)


def _warm_up(engine) -> None:
    from ingot.sampling_params import SamplingParams

    engine.add_request([1, 2, 3], SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True))
    while engine.has_unfinished_requests():
        engine.step()


def _common(engine, args) -> dict:
    spec = engine.spec
    return {"engine": args.engine, "model": spec.model.architecture, "dtype": spec.dtype,
            "device": spec.target.describe(), "attention_backend": engine.attention_backend,
            "isl": args.isl, "osl": args.osl, "policy": args.policy,
            "kv_cache_tokens": engine.pool_plan.num_tokens, **_speculation(engine)}


def _speculation(engine) -> dict:
    """What speculation did over the run (warm-up included), when the engine speculates."""
    config, stats = engine.spec.speculative, engine.stats
    if not config.enabled:
        return {}
    return {"speculative": config.mode, "max_draft_len": config.max_draft_len,
            "draft_acceptance_rate": round(stats.draft_acceptance_rate, 4),
            "mean_accepted_length": round(stats.mean_accepted_length, 3),
            "draft_seconds": round(stats.draft_seconds_total, 4)}


def _report(result: dict, json_path: str | None) -> int:
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    sys.stdout.flush()
    return 0
