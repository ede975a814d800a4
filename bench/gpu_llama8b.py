"""Llama-3.1-8B shape (random weights), bf16, one GPU: ceilings, build, cold start, latency,
offline throughput; and transformers on the same card as the peer.

    python bench/gpu_llama8b.py STEP [STEP ...] --out DIR

Steps (each writes DIR/STEP.json; run the peer steps in their own process so that the two
engines never share GPU memory):
    ceilings                 device-to-device copy bandwidth and the 8192^3 bf16 matmul rate
    build                    ingot build --load-format dummy (timed, tactic tuning included)
    latency                  cold start, then batch 1, ISL/OSL 128/128
    tput:ISL:OSL:N           offline throughput, N requests submitted at once
    peer-latency             transformers generate, batch 1, 128/128 (static cache + torch.compile)
    peer-tput:ISL:OSL:N      transformers generate_batch (continuous batching)
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import torch
from benchlib import median_cuda_seconds

CONFIG = Path(__file__).resolve().parent / "configs" / "llama-3.1-8b.json"  # copy of shared/configs
ENGINE = Path("/tmp/ingot-engines/llama-3.1-8b-bf16")


def timed_cuda(fn, iters: int = 20) -> float:
    return median_cuda_seconds(fn, iters)


def ceilings() -> dict:
    src = torch.empty(1 << 30, dtype=torch.bfloat16, device="cuda")  # 2 GiB
    dst = torch.empty_like(src)
    copy_s = timed_cuda(lambda: dst.copy_(src))
    del src, dst
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    mm_s = timed_cuda(lambda: a @ b)
    return {"device": torch.cuda.get_device_name(), "copy_tbps": 2 * 2**31 / copy_s / 1e12,
            "matmul_tflops": 2 * 8192**3 / mm_s / 1e12}


def build(max_batch_size: int = 256) -> dict:
    """build:N builds with max_batch_size N (CUDA graphs up to N) and uses that engine afterwards."""
    from ingot.builder.build import build_engine
    from ingot.config import BuildConfig

    global ENGINE
    ENGINE = ENGINE.with_name(f"llama-3.1-8b-bf16-b{max_batch_size}")
    started = time.perf_counter()
    spec = build_engine(str(CONFIG), ENGINE, BuildConfig(dtype="bf16", max_batch_size=max_batch_size, max_seq_len=4352,
                                                         max_input_len=2048, max_num_tokens=8192),
                        device="cuda", load_format="dummy")
    return {"build_s": time.perf_counter() - started, "max_batch_size": max_batch_size, "tactics": spec.tactics,
            "weight_bytes": (ENGINE / "rank0.safetensors").stat().st_size}


def _engine():
    from ingot.config import CacheConfig
    from ingot.runtime.engine import LLMEngine

    return LLMEngine(ENGINE, CacheConfig(gpu_memory_fraction=0.9), device="cuda")


def _prompts(num: int, isl: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(128000) for _ in range(isl)] for _ in range(num)]


def _run(engine, prompts, osl: int) -> None:
    from ingot.sampling_params import SamplingParams

    params = SamplingParams(max_tokens=osl, temperature=0.0, ignore_eos=True)
    for prompt in prompts:
        engine.add_request(prompt, params)
    while engine.has_unfinished_requests():
        engine.step()


def latency() -> dict:
    from ingot.sampling_params import SamplingParams

    started = time.perf_counter()
    engine = _engine()
    loaded = time.perf_counter()
    _run(engine, _prompts(1, 128, seed=1), 1)
    torch.cuda.synchronize()
    cold = {"load_s": loaded - started, "load_to_first_token_s": time.perf_counter() - started,
            "kv_cache_tokens": engine.pool_plan.num_tokens}
    _run(engine, _prompts(1, 128, seed=2), 16)  # warm-up
    runs = []
    for seed in range(5):
        prompt = _prompts(1, 128, seed=10 + seed)[0]
        engine.add_request(prompt, SamplingParams(max_tokens=128, temperature=0.0, ignore_eos=True))
        full_gcs = gc.get_stats()[2]["collections"]  # Python's full collections: a pause of many ms
        t0 = time.perf_counter()
        engine.step()
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        gcs_in_ttft = gc.get_stats()[2]["collections"] - full_gcs
        while engine.has_unfinished_requests():
            engine.step()
        t2 = time.perf_counter()
        runs.append({"ttft_ms": (t1 - t0) * 1e3, "decode_tok_s": 127 / (t2 - t1), "full_gcs_in_ttft": gcs_in_ttft,
                     "full_gcs_in_decode": gc.get_stats()[2]["collections"] - full_gcs - gcs_in_ttft})
    best = max(runs, key=lambda r: r["decode_tok_s"])
    return {**cold, "isl": 128, "osl": 128, "batch_size": 1, "runs": runs, **best}


def profile(batch: int = 1) -> dict:
    """Where a decode step goes: the graph replay alone (GPU) vs the whole step (host)."""
    import cProfile
    import io
    import pstats

    from ingot.sampling_params import SamplingParams

    engine = _engine()
    _run(engine, _prompts(1, 128, seed=2), 8)
    graph, *_ = engine.runner.graphs.graphs[engine.runner.graphs.key_for(batch, 1)]
    replay_s = timed_cuda(graph.replay, iters=50)
    for prompt in _prompts(batch, 128, seed=5):
        engine.add_request(prompt, SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True))
    while engine.stats.running < batch or any(r.num_computed_tokens < r.num_prompt_tokens
                                               for r in engine.scheduler.running):
        engine.step()
    profiler = cProfile.Profile()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    profiler.enable()
    for _ in range(100):
        engine.step()
    profiler.disable()
    step_s = (time.perf_counter() - t0) / 100
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(18)
    return {"batch_size": batch, "graph_replay_ms": replay_s * 1e3, "step_ms_profiled": step_s * 1e3,
            "top": text.getvalue()[-6000:]}


def throughput(isl: int, osl: int, num: int) -> dict:
    engine = _engine()
    _run(engine, _prompts(4, 16, seed=3), 4)  # warm-up
    prompts = _prompts(num, isl)
    started = time.perf_counter()
    _run(engine, prompts, osl)
    elapsed = time.perf_counter() - started
    return {"isl": isl, "osl": osl, "num_requests": num, "elapsed_s": elapsed, "output_tok_s": num * osl / elapsed,
            "preemptions": engine.stats.preempted_total, "steps": engine.stats.num_steps,
            "kv_cache_tokens": engine.pool_plan.num_tokens}


def _hf_model():
    import transformers

    config = transformers.LlamaConfig(**json.loads(CONFIG.read_text()))
    with torch.device("cuda"):
        model = transformers.LlamaForCausalLM(config).to(torch.bfloat16).eval()
    return model, transformers


def peer_latency() -> dict:
    model, transformers = _hf_model()
    ids = torch.tensor(_prompts(1, 128, seed=10), device="cuda")
    result = {"name": f"transformers {transformers.__version__} generate"}
    for label, kwargs in (("static_compile", dict(cache_implementation="static", compile_config=None)),
                          ("dynamic", {})):
        try:
            if label == "static_compile":
                model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=False)
            gen = dict(do_sample=False, attention_mask=torch.ones_like(ids), pad_token_id=0, **kwargs)
            gen.pop("compile_config", None)
            for _ in range(2):  # compile / warm-up
                model.generate(ids, max_new_tokens=128, min_new_tokens=128, **gen)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            model.generate(ids, max_new_tokens=1, min_new_tokens=1, **gen)
            torch.cuda.synchronize()
            t1 = time.perf_counter()
            model.generate(ids, max_new_tokens=128, min_new_tokens=128, **gen)
            torch.cuda.synchronize()
            t2 = time.perf_counter()
            result[label] = {"ttft_ms": (t1 - t0) * 1e3, "decode_tok_s": 127 / ((t2 - t1) - (t1 - t0))}
        except Exception as exc:  # recorded: the peer's fast path may not work in every version
            result[label] = {"error": repr(exc)[:500]}
        finally:
            model.forward = type(model).forward.__get__(model)
    return result


def peer_throughput(isl: int, osl: int, num: int) -> dict:
    model, transformers = _hf_model()
    config = transformers.GenerationConfig(max_new_tokens=osl, min_new_tokens=osl, do_sample=False,
                                           eos_token_id=None, pad_token_id=0)
    prompts = _prompts(num, isl)
    try:
        model.generate_batch(prompts[:4], generation_config=config)
        started = time.perf_counter()
        outputs = model.generate_batch(prompts, generation_config=config)
        elapsed = time.perf_counter() - started
        generated = sum(len(o.generated_tokens) for o in outputs.values())
        return {"name": f"transformers {transformers.__version__} generate_batch", "isl": isl, "osl": osl,
                "num_requests": num, "elapsed_s": elapsed, "output_tok_s": generated / elapsed}
    except Exception as exc:
        return {"name": "transformers generate_batch", "error": repr(exc)[:500]}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("steps", nargs="+")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    for step in args.steps:
        name, *params = step.split(":")
        fn = {"ceilings": ceilings, "build": build, "latency": latency, "tput": throughput, "profile": profile,
              "peer-latency": peer_latency, "peer-tput": peer_throughput}[name]
        result = fn(*map(int, params))
        result.update(step=step, commit=commit, device=torch.cuda.get_device_name(),
                      command=" ".join(["python"] + sys.argv))
        (out / f"{step.replace(':', '_')}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(step, json.dumps({k: v for k, v in result.items() if k != "tactics"}, default=str)[:1500], flush=True)
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
