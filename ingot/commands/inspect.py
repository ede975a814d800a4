"""`ingot inspect ENGINE`: what was frozen at build time."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("inspect", help="show what an engine froze: model, envelope, precision, device")
    p.add_argument("engine", help="engine directory")
    p.add_argument("--json", action="store_true", help="print engine.json plus the weight list as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ingot.engine_format import read_spec

    spec = read_spec(args.engine)
    files = rank_weights(Path(args.engine), spec)
    if args.json:
        print(json.dumps({**spec.to_json(), "rank_weights": files}, indent=2))
        return 0
    for line in [*describe(spec, files), *describe_scales(Path(args.engine), spec),
                 *describe_kv_scales(Path(args.engine), spec)]:
        print(line)
    return 0


def rank_weights(directory: Path, spec) -> dict[str, dict]:
    """file name -> {"bytes": size, "tensors": {name: [dtype, shape]}} for every rank's file."""
    from safetensors import safe_open

    from ingot.engine_format import rank_file

    files = {}
    for rank in spec.mapping.ranks:
        path = directory / rank_file(rank.rank)
        with safe_open(str(path), framework="pt") as f:
            tensors = {name: [f.get_slice(name).get_dtype(), list(f.get_slice(name).get_shape())] for name in f.keys()}
        files[path.name] = {"bytes": path.stat().st_size, "tensors": tensors}
    return files


def describe(spec, files: dict[str, dict]) -> list[str]:
    m, b = spec.model, spec.build
    rope = m.rope_scaling.get("rope_type") if m.rope_scaling else "default"
    return [
        f"engine format  {spec.format_version}   built from {spec.source} in {spec.build_seconds:.1f} s",
        f"target         {spec.target.describe()}",
        f"model          {m.architecture}: {m.num_layers} layers, hidden {m.hidden_size}, heads {m.num_heads} "
        f"(kv {m.num_kv_heads}, head_dim {m.head_dim}), mlp {m.intermediate_size}, vocab {m.vocab_size}",
        f"               rope theta {m.rope_theta:g} ({rope}), tied embeddings {m.tie_word_embeddings}, "
        f"qkv bias {m.qkv_bias}, qk norm {m.qk_norm}, sliding window {m.sliding_window}",
        f"precision      {spec.dtype} activations; quantization {_describe_quant(spec.quant)}",
        describe_kv_cache(spec),
        f"envelope       max_batch_size {b.max_batch_size}, max_input_len {b.max_input_len}, "
        f"max_seq_len {b.max_seq_len}, max_num_tokens {b.max_num_tokens}, tokens_per_block {b.tokens_per_block}",
        *describe_mapping(spec.mapping),
        f"speculative    {_describe_speculative(spec.speculative)}",
        *(f"weights        {name}: {len(f['tensors'])} tensors, {f['bytes'] / 2**20:.1f} MiB" for name, f in files.items()),
        "software       " + ", ".join(f"{k} {v}" for k, v in spec.versions.items()),
        f"weights from   {_describe_origin(spec)}",
        *describe_tactics(spec),
    ]


def describe_scales(directory: Path, spec) -> list[str]:
    """An FP8 engine's scales, as rank 0 stores them; nothing for other precisions."""
    if spec.quant.method != "fp8":
        return []
    from safetensors import safe_open

    from ingot.engine_format import rank_file
    from ingot.quantization.fp8 import scale_lines

    with safe_open(str(directory / rank_file(0)), framework="pt") as f:
        scales = {name: f.get_tensor(name) for name in f.keys() if name.endswith("_scale")}
    calibration, imported = spec.quant.params.get("calibration"), spec.quant.params.get("imported_from")
    source = (f"calibrated on {calibration['source']}, {calibration['num_samples']} samples of "
              f"{calibration['seq_len']} tokens" if calibration else
              f"read from the {imported} checkpoint" if imported else "no calibration")
    return [f"fp8 scales     {rank_file(0)} ({source}):", *scale_lines(scales)]


def describe_kv_cache(spec) -> str:
    """What the KV cache stores and what one token of it takes (K and V of every layer, all ranks)."""
    m, width = spec.model, spec.kv_element_bytes
    dtype = "fp8 (E4M3)" if spec.kv_dtype == "fp8" else spec.kv_dtype
    per_token = 2 * m.num_layers * m.num_kv_heads * m.head_dim * width
    return (f"kv cache       {dtype}: {per_token:,} bytes per token ({m.num_layers} layers x {m.num_kv_heads} KV "
            f"heads x head_dim {m.head_dim} x K and V x {width} byte{'s' if width > 1 else ''})")


def describe_kv_scales(directory: Path, spec) -> list[str]:
    """An fp8 KV cache's per-layer scales, from the rank files that hold each layer."""
    if not spec.quant.kv_cache_fp8:
        return []
    if not spec.quant.kv_cache_calibrates:
        return ["kv scales      unit: 1.0 for K and V in every layer (--kv-cache-scales unit, not calibrated)"]
    from safetensors import safe_open

    from ingot.engine_format import rank_file
    from ingot.quantization.kv_cache import kv_scale_lines

    scales = {}
    for rank in spec.mapping.ranks:
        with safe_open(str(directory / rank_file(rank.rank)), framework="pt") as f:
            scales.update({name: f.get_tensor(name) for name in f.keys() if name.endswith(".self_attn.kv_scale")})
    calibration = spec.quant.kv_cache_calibration or {}
    return [f"kv scales      calibrated on {calibration.get('source')}, {calibration.get('num_samples')} samples of "
            f"{calibration.get('seq_len')} tokens (max |k| and |v| / 448):", *kv_scale_lines(scales)]


def _describe_origin(spec) -> str:
    """Where the weights and the tokenizer came from."""
    if spec.load_format != "dummy":
        params = spec.quant.params
        if params.get("prequantized"):  # FP8 checkpoints (INT4 ones say so in the quantization line)
            return (f"{spec.source} (tokenizer too); pre-quantized {spec.quant.method} weights in the "
                    f"{params.get('imported_from')} format ({params.get('checkpoint_scheme')}), not re-quantized")
        return f"{spec.source} (tokenizer too)"
    if spec.tokenizer_source:
        return f"random (--load-format dummy); tokenizer from {spec.tokenizer_source} (--tokenizer)"
    return "random (--load-format dummy), no tokenizer (token ids only; --tokenizer at build gives one)"


def _describe_quant(quant) -> str:
    from ingot.quantization import make_scheme

    params = ", ".join(f"{k}={v}" for k, v in quant.params.items())
    return f"{make_scheme(quant).describe()}{f' ({params})' if params else ''}; KV cache {quant.kv_cache_dtype}"


def _describe_speculative(config) -> str:
    if not config.enabled:
        return "off"
    source = (f"n-grams of {config.ngram_min}-{config.ngram_max}" if config.mode == "ngram"
              else "from the draft engine given at run time, --draft-engine DIR")
    return (f"{config.mode}: up to {config.max_draft_len} draft tokens a step ({source}) while at most "
            f"{config.max_batch} requests run")


def describe_mapping(mapping) -> list[str]:
    """One line for the layout, one per rank: its tensor-parallel slice and the layers it holds."""
    c = mapping.config
    lines = [f"parallel       tp {c.tp}, pp {c.pp}, ep {c.ep}: {mapping.world_size} rank(s)"]
    if mapping.world_size > 1:
        for r in mapping.ranks:
            lines.append(f"  rank {r.rank:<3}     tp rank {r.tp_rank}, stage {r.pp_rank}, layers [{r.layers[0]}, {r.layers[1]})")
    return lines


def describe_tactics(spec) -> list[str]:
    """Which GEMM implementation runs each matmul, per tokens-per-step bucket."""
    if not spec.tactics:
        return ["matmuls        torch F.linear for every matmul (nothing tuned: "
                f"{'CPU has one implementation' if spec.target.kind == 'cpu' else 'no tactics recorded'})"]
    lines = ["matmuls        tuned at build on this GPU (tokens per step -> kernel):"]
    for gemm, table in spec.tactics.items():
        cells = ", ".join(f"{m}: {tactic}" for m, tactic in sorted(table.items(), key=lambda kv: int(kv[0])))
        lines.append(f"  {gemm:<13}{cells}")
    if spec.build.cuda_graph_batch_sizes:
        lines.append(f"cuda graphs    decode batch sizes {list(spec.build.cuda_graph_batch_sizes)}")
    return lines
