"""Offline benchmarks of an engine, like trtllm-bench:

    ingot bench throughput ENGINE --isl 128 --osl 128 --num-requests 1000 [--random-lengths] [--json OUT]
    ingot bench latency    ENGINE --isl 128 --osl 128 --batch-size 1 [--repeats 3] [--json OUT]

throughput: every request is submitted at once and the engine runs until all finish;
            output tok/s = generated tokens / wall time.
latency:    a batch of identical-shape requests, timed per step: TTFT = time to the first
            token, decode tok/s = tokens per sequence after the first / time after the first.
Prompts are random token ids (no prefix can be shared), EOS is ignored so every request
generates exactly its output length.

Each run writes the whole record (ingot/bench/record.py): device, commit, command, engine summary,
the card's ceilings measured in this process before the engine loads, the floor (latency: bytes a
decode step reads) or ceiling (throughput: FLOPs per output token) computed from the engine's
config, the ratios, and with --peer the same workload on transformers at the same shapes.
"""

from __future__ import annotations

import argparse
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
        p.add_argument("--json", metavar="OUT", help="also write the record as JSON to this file")
        p.add_argument("--peer", choices=["transformers"], default=None,
                       help="also run the workload on transformers (random weights, same shapes) in a subprocess")
        if name == "throughput":
            p.add_argument("--num-requests", type=int, default=256)
            p.add_argument("--random-lengths", action="store_true",
                           help="draw each request's lengths uniformly from [len/2, len*3/2]")
            p.add_argument("--profile-dir", default=None, metavar="DIR",
                           help="torch-profile a window of steps: DIR/kernels.txt, kernels.json, trace.json")
            p.add_argument("--profile-steps", default=(60, 6), type=_step_window, metavar="START:COUNT",
                           help="the steps --profile-dir profiles (default 60:6: after the first prompts' prefill)")
        else:
            p.add_argument("--batch-size", type=int, default=1)
            p.add_argument("--repeats", type=int, default=3)
        p.set_defaults(func=_thawing(func))


def _thawing(run):
    """run(args), then unfreeze the heap open_engine froze (the command may run inside another program)."""
    def wrapped(args: argparse.Namespace) -> int:
        from ingot.runtime.gc_heap import unfreeze

        try:
            return run(args)
        finally:
            unfreeze()
    return wrapped


def _step_window(text: str) -> tuple[int, int]:
    start, _, count = text.partition(":")
    if not (start.isdigit() and count.isdigit() and int(count) > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: give START:COUNT, two whole numbers with COUNT > 0 (e.g. 60:6)")
    return int(start), int(count)


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
    from ingot.config import CacheConfig, SchedulerConfig
    from ingot.runtime.engine import LLMEngine
    from ingot.runtime.gc_heap import freeze_startup_heap

    if args.skip_verify:
        from ingot.envs import set_skip_verify

        set_skip_verify()
    spec = read_engine_spec(args)
    cache = CacheConfig(gpu_memory_fraction=args.kv_fraction, max_cache_bytes=args.max_cache_bytes,
                        enable_prefix_caching=False)
    engine = LLMEngine(args.engine, cache, device=args.device, attention_backend=args.attention_backend or "auto",
                       scheduler_config=SchedulerConfig.for_engine(spec.build, args.policy),
                       enforce_eager=args.enforce_eager, draft_engine=args.draft_engine)
    freeze_startup_heap()  # as the serving engine core does (a like-for-like host cost per step); thawed on return
    return engine


def read_engine_spec(args):
    from ingot.engine_format import read_spec

    return read_spec(args.engine)


def start_record(args, benchmark: str) -> dict:
    """Header, engine summary and the card's ceilings, measured before the engine takes the memory;
    the peer's run too when asked (in its own process, so the two never share the card)."""
    from ingot.bench import record
    from ingot.bench.ceilings import measure_ceilings

    spec = read_engine_spec(args)
    device = args.device or ("cuda" if spec.target.kind == "cuda" else "cpu")
    result = {**record.header(record.device_name(device), getattr(args, "argv", None)), "benchmark": benchmark,
              "engine": record.engine_summary(spec, args.engine), "model": spec.model.architecture,
              "dtype": spec.dtype, "quant": spec.quant.method, "isl": args.isl, "osl": args.osl}
    result.update(measure_ceilings(device, spec.dtype, fp8=spec.quant.method.startswith("fp8")))
    if args.peer:
        from ingot.bench.peer import run_peer

        result["peer"] = run_peer(spec, benchmark, args)
    return result


def run_throughput(args: argparse.Namespace) -> int:
    from ingot.bench.record import add_compute_ceiling
    from ingot.bench.step_profile import StepRecorder
    from ingot.sampling_params import SamplingParams

    result = start_record(args, "throughput")
    engine = open_engine(args)
    work = make_workload(args.num_requests, args.isl, args.osl, engine.spec.model.vocab_size, args.seed,
                         args.random_lengths)
    _warm_up(engine, args.isl)
    before = _counters(engine)
    started = time.perf_counter()
    for prompt, osl in zip(work.prompts, work.output_lens):
        engine.add_request(prompt, SamplingParams(max_tokens=osl, temperature=0.0, ignore_eos=True))
    peak_running = 0
    recorder = StepRecorder(engine, args.profile_dir, *args.profile_steps)
    while engine.has_unfinished_requests():
        recorder.step()
        peak_running = max(peak_running, engine.stats.running)
    elapsed = time.perf_counter() - started
    output_tokens, input_tokens = sum(work.output_lens), sum(map(len, work.prompts))
    result.update({
        **_runtime(engine, args), "num_requests": args.num_requests, "random_lengths": args.random_lengths,
        "input_tokens": input_tokens, "output_tokens": output_tokens, "elapsed_s": round(elapsed, 3),
        "request_per_s": round(args.num_requests / elapsed, 3),
        "output_tok_s": round(output_tokens / elapsed, 2), "input_tok_s": round(input_tokens / elapsed, 2),
        "total_tok_s": round((input_tokens + output_tokens) / elapsed, 2),
        "peak_running": peak_running, **_counters(engine, since=before), "steps_timeline": recorder.finish(),
    })
    add_compute_ceiling(result, engine.spec, [(len(p), o) for p, o in zip(work.prompts, work.output_lens)])
    return _report(result, args.json)


def run_latency(args: argparse.Namespace) -> int:
    from ingot.bench.record import add_decode_floor
    from ingot.sampling_params import SamplingParams

    result = start_record(args, "latency")
    engine = open_engine(args)
    work = make_workload(args.batch_size, args.isl, args.osl, engine.spec.model.vocab_size, args.seed)
    _warm_up(engine, args.isl)
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
        runs.append({"ttft_ms": round((first - started) * 1e3, 3), "e2e_ms": round((end - started) * 1e3, 3),
                     "decode_tok_s": round((args.osl - 1) / max(end - first, 1e-9), 3)})
    median = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    result.update({
        **_runtime(engine, args), "batch_size": args.batch_size, "repeats": args.repeats, "runs": runs,
        "ttft_ms": round(median["ttft_ms"], 2), "e2e_ms": round(median["e2e_ms"], 2),
        "tpot_ms": round(1e3 / median["decode_tok_s"], 3), "decode_tok_s": round(median["decode_tok_s"], 2),
        "decode_tok_s_total": round(median["decode_tok_s"] * args.batch_size, 2),
    })
    add_decode_floor(result, engine.spec, args.batch_size, args.isl, args.osl)
    return _report(result, args.json)


def _warm_up(engine, isl: int) -> None:
    """Before the clock starts, run a step of every prompt-chunk size the engine's GEMM tactics tell
    apart above the decode graphs (2048, 4096, ... up to max_num_tokens tokens: each bucket may
    pick another Triton kernel, JIT-compiled on first use; seconds each, which a first 128/128 run on
    an H200 spent inside its clock), then one request of the benchmark's prompt length. Decode
    shapes were compiled when the CUDA graphs were captured."""
    from ingot.builder.tuning import token_buckets
    from ingot.sampling_params import SamplingParams

    build, vocab = engine.spec.build, engine.spec.model.vocab_size
    graphs = max(build.cuda_graph_batch_sizes or (0,))
    chunk_sizes = [n for n in token_buckets(build) if n > graphs] if engine.device.type == "cuda" else []
    for step_tokens in [*chunk_sizes, min(isl, build.max_input_len)]:
        length = min(isl, build.max_input_len, step_tokens)
        for first in range(0, step_tokens, length):
            prompt = [(7 * i + first + 1) % vocab for i in range(min(length, step_tokens - first))]
            engine.add_request(prompt, SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True))
        while engine.has_unfinished_requests():
            engine.step()


def _runtime(engine, args) -> dict:
    """How the engine ran: what the command chose at run time."""
    return {"attention_backend": engine.attention_backend, "policy": args.policy,
            "cuda_graphs": engine.device.type == "cuda" and not args.enforce_eager, "kv_cache_tokens": engine.pool_plan.num_tokens,
            **_speculation(engine)}


def _counters(engine, since: dict | None = None) -> dict:
    """The engine's cumulative counters, or their growth since an earlier reading."""
    stats = engine.stats
    now = {"steps": stats.num_steps, "preemptions": stats.preempted_total}
    for name, attr in (("computed_tokens", "computed_tokens_total"), ("recomputed_tokens", "recomputed_tokens_total")):
        if hasattr(stats, attr):
            now[name] = getattr(stats, attr)
    if since is None:
        return now
    return {key: value - since.get(key, 0) for key, value in now.items()}


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
    from ingot.bench.record import write

    width = max(map(len, result))
    for key, value in result.items():
        if not isinstance(value, (dict, list)):
            print(f"{key:<{width}}  {value}")
    if json_path:
        write(result, json_path)
        print(f"record written to {json_path}")
    sys.stdout.flush()
    return 0
