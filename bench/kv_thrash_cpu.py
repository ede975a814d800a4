"""A workload several times larger than the KV pool, on CPU: does max_utilization thrash?

    python bench/kv_thrash_cpu.py [--baseline TREE --baseline-commit SHA] [--runs 2] [--out bench/results]

A proxy, on a small random model (--load-format dummy), of the H200 run that made 287
preemptions (Llama-3.1-8B shape, 1024/512 random lengths): 200 requests of 64/32 tokens, each
request's lengths drawn uniformly from [len/2, len*3/2], all submitted at once, greedy, EOS
ignored, prefix caching off; the pool holds about a quarter of the workload's tokens at once.

Reported per run: preemptions, computed and recomputed tokens (positions computed again because a
preemption dropped their KV), wall time and output tok/s. Every tree is measured in its own
process, `--runs` times, taking turns with --baseline: the same runs on that source tree (e.g.
`git archive SHA | tar -x -C TREE`) are the "before". recomputed = computed - the positions every
request needs once (prompt + output - 1), which holds without the engine's own counter (an
older tree may lack it); where the engine has it, the record says whether the two agree.
Writes bench/results/DATE-cpu-kv-thrash.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import record_header, write_record

HERE = Path(__file__).resolve().parent
MODEL = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=256, intermediate_size=512,
             num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2, vocab_size=1024,
             max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=10000.0, bos_token_id=1, eos_token_id=2,
             tie_word_embeddings=False, torch_dtype="float32")
BUILD = dict(dtype="fp32", max_batch_size=256, max_input_len=128, max_seq_len=256, max_num_tokens=512,
             tokens_per_block=16)


def workload(num: int, isl: int, osl: int, seed: int) -> list[tuple[list[int], int]]:
    """(prompt, output length) per request, lengths uniform in [len/2, len*3/2]."""
    rng = random.Random(seed)
    scale = lambda n: rng.randint(n // 2, n * 3 // 2)  # noqa: E731
    return [([rng.randrange(3, MODEL["vocab_size"]) for _ in range(scale(isl))], scale(osl)) for _ in range(num)]


def build(directory: Path) -> Path:
    from ingot.builder.build import build_engine
    from ingot.config import BuildConfig

    (directory / "config.json").write_text(json.dumps(MODEL))
    build_engine(str(directory / "config.json"), directory / "engine", BuildConfig(**BUILD), device="cpu",
                 load_format="dummy")
    return directory / "engine"


def measure(engine_dir: str, args: argparse.Namespace) -> dict:
    """One run, in this process, on whatever ingot PYTHONPATH gives."""
    from ingot.config import CacheConfig
    from ingot.runtime.engine import LLMEngine
    from ingot.sampling_params import SamplingParams

    work = workload(args.num_requests, args.isl, args.osl, args.seed)
    engine = LLMEngine(engine_dir, CacheConfig(max_cache_bytes=args.cache_bytes, enable_prefix_caching=False),
                       device="cpu")
    started = time.perf_counter()
    for prompt, osl in work:
        engine.add_request(prompt, SamplingParams(max_tokens=osl, temperature=0.0, ignore_eos=True))
    computed = 0
    while engine.has_unfinished_requests():
        engine.step()
        computed += engine.stats.tokens_scheduled
    elapsed = time.perf_counter() - started
    stats, needed = engine.stats, sum(len(p) + osl - 1 for p, osl in work)
    run = {"preemptions": stats.preempted_total, "computed_tokens": computed, "recomputed_tokens": computed - needed,
           "recomputed_share": round((computed - needed) / computed, 4), "steps": stats.num_steps,
           "wall_s": round(elapsed, 3), "output_tok_s": round(sum(osl for _, osl in work) / elapsed, 1),
           "kv_cache_tokens": engine.pool_plan.num_tokens}
    if hasattr(stats, "recomputed_tokens_total"):
        run["engine_counters_agree"] = (stats.computed_tokens_total, stats.recomputed_tokens_total) == (
            computed, computed - needed)
    return run


def one_run(tree: Path, engine_dir: Path, args: argparse.Namespace) -> dict:
    """One run in a fresh process importing ingot from `tree`."""
    command = [sys.executable, str(HERE / "kv_thrash_cpu.py"), "--measure", str(engine_dir),
               "--num-requests", str(args.num_requests), "--isl", str(args.isl), "--osl", str(args.osl),
               "--cache-bytes", str(args.cache_bytes), "--seed", str(args.seed)]
    env = {**os.environ, "PYTHONPATH": str(tree), "INGOT_NUM_THREADS": str(args.threads)}
    done = subprocess.run(command, env=env, cwd=tree, capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(tree, result, file=sys.stderr, flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--num-requests", type=int, default=200)
    parser.add_argument("--isl", type=int, default=64)
    parser.add_argument("--osl", type=int, default=32)
    # 300 blocks of 16 tokens x 4 layers x K,V x 2 heads x 32 x fp32 = 4,800 tokens: a quarter of
    # the workload's ~19,200 (200 x (64 + 32)), 50 requests of mean length at once
    parser.add_argument("--cache-bytes", type=int, default=300 * 16 * 4 * 2 * 2 * 32 * 4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=int, default=2)
    # one thread: on a machine others share, two threads waiting on each other made wall times
    # swing from 3 s to 60 s between identical runs
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of each run")
    parser.add_argument("--baseline", type=Path, help="a source tree to measure as the 'before'")
    parser.add_argument("--baseline-commit", help="the commit that tree was exported from")
    parser.add_argument("--measure", metavar="ENGINE", help=argparse.SUPPRESS)  # one run; JSON on stdout
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args)))
        return 0

    trees = {"after": HERE.parent, **({"before": args.baseline.resolve()} if args.baseline else {})}
    runs = {name: [] for name in trees}
    with tempfile.TemporaryDirectory() as tmp:
        engine_dir = build(Path(tmp))
        for _ in range(args.runs):  # interleaved, so a busy spell on the machine falls on both trees
            for name, tree in trees.items():
                runs[name].append(one_run(tree, engine_dir, args))
    after, before = runs["after"], runs.get("before")
    record = {
        **record_header(),
        "model": "random Llama, 4 layers, hidden 256, 8 heads / 2 KV heads, vocab 1024 (--load-format dummy)",
        "dtype": "fp32", "build": BUILD, "isl": args.isl, "osl": args.osl, "num_requests": args.num_requests,
        "random_lengths": "each request's ISL and OSL uniform in [len/2, len*3/2]", "seed": args.seed,
        "kv_cache_bytes": args.cache_bytes, "policy": "max_utilization", "prefix_caching": False,
        "torch_threads": args.threads,
        "after": after,
        "before": {"commit": args.baseline_commit, "runs": before} if before else None,
        "notes": "CPU wall times are noisy (2 shared cores): each tree runs --runs times, the trees taking turns",
    }
    write_record(Path(args.out) / f"{datetime.date.today()}-cpu-kv-thrash.json", record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
