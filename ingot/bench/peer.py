"""The peer on the same card: transformers, random weights at the engine's shapes, the same workload.

    latency     `generate` of a batch of equal-length prompts: with a static cache, which transformers
                compiles itself ("static_compile"), and with its default dynamic cache ("dynamic");
                TTFT from a 1-token call, decode tok/s from the rest of a full call
    throughput  `generate_batch` (transformers' continuous batching), all requests at once

It runs in a subprocess (`python -m ingot.bench.peer`, arguments as JSON on stdin, the result as
JSON on stdout's last line) so that the two engines never share GPU memory. A failure of the
peer's fast path is recorded as an error in the record, never hidden.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time

_MODEL_TYPES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2",
                "Qwen3ForCausalLM": "qwen3"}
_TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def run_peer(spec, benchmark: str, args) -> dict:
    """Run the peer for this benchmark in a subprocess and return its result (or its error)."""
    job = {"benchmark": benchmark, "model": spec.model.to_dict(), "dtype": spec.dtype, "isl": args.isl,
           "osl": args.osl, "device": args.device or ("cuda" if spec.target.kind == "cuda" else "cpu"),
           "num_requests": getattr(args, "num_requests", 1), "batch_size": getattr(args, "batch_size", 1),
           "seed": args.seed}
    done = subprocess.run([sys.executable, "-m", "ingot.bench.peer"], input=json.dumps(job), capture_output=True,
                          text=True, timeout=3600)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"name": "transformers", "error": f"exit {done.returncode}: {done.stderr.strip()[-1000:]}"}
    return json.loads(lines[-1])


def hf_config(model: dict, dtype: str):
    """A transformers config of the engine's architecture and shapes (ingot's ModelConfig fields)."""
    import transformers

    arch = model["architecture"]
    if arch not in _MODEL_TYPES:
        raise ValueError(f"no transformers peer for {arch}; peers exist for {', '.join(_MODEL_TYPES)}")
    fields = dict(
        vocab_size=model["vocab_size"], hidden_size=model["hidden_size"], intermediate_size=model["intermediate_size"],
        num_hidden_layers=model["num_layers"], num_attention_heads=model["num_heads"],
        num_key_value_heads=model["num_kv_heads"], head_dim=model["head_dim"], rms_norm_eps=model["rms_norm_eps"],
        max_position_embeddings=model["max_position_embeddings"], tie_word_embeddings=model["tie_word_embeddings"],
        rope_theta=model["rope_theta"], rope_scaling=model["rope_scaling"], torch_dtype=_TORCH_DTYPES[dtype],
        architectures=[arch],
    )
    if arch == "LlamaForCausalLM":
        fields.update(attention_bias=model["qkv_bias"], mlp_bias=model["mlp_bias"])
    return transformers.AutoConfig.for_model(_MODEL_TYPES[arch], **fields)


def _model(job: dict):
    import torch
    import transformers

    config = hf_config(job["model"], job["dtype"])
    with torch.device(job["device"]):
        model = transformers.AutoModelForCausalLM.from_config(config, torch_dtype=getattr(torch, _TORCH_DTYPES[job["dtype"]]))
    return model.eval(), transformers


def _prompts(num: int, isl: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(vocab) for _ in range(isl)] for _ in range(num)]


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peer_latency(job: dict) -> dict:
    import torch

    model, transformers = _model(job)
    ids = torch.tensor(_prompts(job["batch_size"], job["isl"], job["model"]["vocab_size"], job["seed"]), device=job["device"])
    osl = job["osl"]
    result = {"name": f"transformers {transformers.__version__} generate", "batch_size": job["batch_size"]}
    for label, cache in (("static_compile", "static"), ("dynamic", None)):
        try:
            gen = dict(do_sample=False, attention_mask=torch.ones_like(ids), pad_token_id=0,
                       **({"cache_implementation": cache} if cache else {}))
            for _ in range(2):  # compile / warm-up
                model.generate(ids, max_new_tokens=osl, min_new_tokens=osl, **gen)
            _sync(job["device"])
            t0 = time.perf_counter()
            model.generate(ids, max_new_tokens=1, min_new_tokens=1, **gen)
            _sync(job["device"])
            t1 = time.perf_counter()
            model.generate(ids, max_new_tokens=osl, min_new_tokens=osl, **gen)
            _sync(job["device"])
            t2 = time.perf_counter()
            result[label] = {"ttft_ms": round((t1 - t0) * 1e3, 2),
                             "decode_tok_s": round((osl - 1) / ((t2 - t1) - (t1 - t0)), 2)}
        except Exception as exc:  # recorded: the peer's fast path may not work in every version
            result[label] = {"error": repr(exc)[:500]}
    rates = [v["decode_tok_s"] for v in result.values() if isinstance(v, dict) and "decode_tok_s" in v]
    if rates:
        result["decode_tok_s"] = max(rates)
    return result


def peer_throughput(job: dict) -> dict:
    model, transformers = _model(job)
    config = transformers.GenerationConfig(max_new_tokens=job["osl"], min_new_tokens=job["osl"], do_sample=False,
                                           eos_token_id=None, pad_token_id=0)
    prompts = _prompts(job["num_requests"], job["isl"], job["model"]["vocab_size"], job["seed"])
    name = f"transformers {transformers.__version__} generate_batch"
    try:
        model.generate_batch(prompts[:4], generation_config=config)
        started = time.perf_counter()
        outputs = model.generate_batch(prompts, generation_config=config)
        elapsed = time.perf_counter() - started
    except Exception as exc:
        return {"name": name, "error": repr(exc)[:500]}
    generated = sum(len(o.generated_tokens) for o in outputs.values())
    return {"name": name, "num_requests": len(prompts), "elapsed_s": round(elapsed, 3),
            "output_tok_s": round(generated / elapsed, 2)}


def main() -> int:
    job = json.loads(sys.stdin.read())
    run = {"latency": peer_latency, "throughput": peer_throughput}[job["benchmark"]]
    print(json.dumps(run(job)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
