"""`ingot build MODEL -o DIR`: convert a checkpoint into an engine.

make_build_parser is the one definition of the flags: `ingot build` mounts it, and `ingot plan`
checks every command it prints against it. It stays argparse only (no torch) so the planner,
which imports no runtime, can read it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ingot.config import KV_CACHE_DTYPES, KV_CACHE_SCALES, SPECULATIVE_MODES, BuildConfig
from ingot.quantization.registry import build_choices

HELP = "build an engine from a checkpoint folder, a .gguf file or a preset"
DESCRIPTION = "Build an engine. MODEL is a Hugging Face folder, a .gguf file, or a shipped preset (smollm2)."


def make_build_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The `ingot build` parser on its own (add_help=False to mount it as a parent parser)."""
    p = argparse.ArgumentParser(prog="ingot build", description=DESCRIPTION, add_help=add_help)
    p.add_argument("model", help="checkpoint folder, .gguf file, or preset name")
    p.add_argument("-o", "--output", required=True, help="engine directory to write")
    defaults = BuildConfig()
    p.add_argument("--dtype", default=defaults.dtype, choices=["auto", "bf16", "fp16", "fp32"],
                   help="weight and activation precision (auto: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--max-batch-size", type=int, default=defaults.max_batch_size)
    p.add_argument("--max-input-len", type=int, default=None, help="longest prompt (default: min(2048, max_seq_len))")
    p.add_argument("--max-seq-len", type=int, default=None,
                   help="longest prompt + output (default: min(4096, the model's max_position_embeddings))")
    p.add_argument("--max-num-tokens", type=int, default=defaults.max_num_tokens)
    p.add_argument("--tokens-per-block", type=int, default=defaults.tokens_per_block)
    p.add_argument("--device", default=None, help="build for this device (default: cuda if present, else cpu)")
    p.add_argument("--load-format", default="auto", choices=["auto", "dummy"],
                   help="dummy: MODEL is a config.json (or its folder); weights are random at its shapes")
    p.add_argument("--dummy-weights", default="file", choices=["file", "at_load"],
                   help="--load-format dummy only: file (the random weights are written to the engine) or at_load "
                        "(no weight file: the loader generates them from a seed engine.json records, as vLLM's "
                        "dummy format does; for models larger than the disk)")
    p.add_argument("--tokenizer", default=None, metavar="DIR_OR_FILE",
                   help="--load-format dummy only: a tokenizer.json, or a folder holding one (its "
                        "tokenizer_config.json, special_tokens_map.json, generation_config.json and chat template are "
                        "copied too), so the engine reads and writes text; its vocabulary, added tokens included, must "
                        "fit the config's vocab_size. A checkpoint brings its own tokenizer: with one, it is refused")
    p.add_argument("--cuda-graph-batch-sizes", type=_int_list, default=None,
                   help="comma-separated decode batch sizes to capture (default: 1,2,4,8,16,32,64,...)")
    p.add_argument("--quant", default="none", choices=list(build_choices()),
                   help="store the block linear layers quantized (int4_*: 4-bit weights, 16-bit activations; "
                        "fp8: E4M3 weights and activations); "
                        "a checkpoint quantized already (AutoAWQ, GPTQ, compressed-tensors) is read as it is")
    p.add_argument("--group-size", type=int, default=None, help="int4: columns per scale (32, 64 or 128; default 128)")
    p.add_argument("--act-order", action="store_true", help="int4_gptq: quantize columns by decreasing activity")
    p.add_argument("--fp8-scaling", default=None, choices=["per_channel", "per_tensor"],
                   help="--quant fp8: per_channel (default: a scale per output channel and per token, no "
                        "calibration) or per_tensor (one weight scale per matrix, static activation scales "
                        "calibrated on --calib-data)")
    p.add_argument("--calib-data", default=None,
                   help="int4_awq / int4_gptq / fp8 per_tensor / --kv-cache-dtype fp8: a text file to calibrate on")
    p.add_argument("--calib-size", type=int, default=None, help="calibration samples (default 128)")
    p.add_argument("--calib-seq-len", type=int, default=None, help="tokens per calibration sample (default 512)")
    p.add_argument("--kv-cache-dtype", default="auto", choices=list(KV_CACHE_DTYPES),
                   help="auto: the KV cache in the model dtype; fp8: E4M3 keys and values with one K and one V scale "
                        "per layer, twice the tokens in the same memory (any --quant)")
    p.add_argument("--kv-cache-scales", default=None, choices=list(KV_CACHE_SCALES),
                   help="--kv-cache-dtype fp8: calibrated (default: each layer's largest |k| and |v| on --calib-data, "
                        "/ 448) or unit (1.0, when there is no text to calibrate on)")
    p.add_argument("--speculative", default=None, choices=list(SPECULATIVE_MODES),
                   help="speculative decoding: ngram (prompt lookup: drafts from the request's own tokens and "
                        "finished ones) or draft_target (a smaller model's engine drafts; --draft-engine DIR at run time)")
    p.add_argument("--max-draft-len", type=int, default=4, help="tokens a proposer may draft per step (1-7)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks: every layer split over N GPUs")
    p.add_argument("--pp", type=int, default=1, help="pipeline stages: the layers split into M runs, one per stage")
    p.add_argument("--pp-layers", type=_int_list, default=None,
                   help="comma-separated layers per pipeline stage (default: as even as possible)")
    return p


def _quant_params(args: argparse.Namespace) -> dict:
    """The --quant method's settings that were given (the method fills its defaults)."""
    if args.fp8_scaling is not None and args.quant != "fp8":
        from ingot.errors import ConfigError

        raise ConfigError(f"--fp8-scaling {args.fp8_scaling} applies to --quant fp8 only (this build has --quant "
                          f"{args.quant}): add --quant fp8 or drop --fp8-scaling")
    given = {"group_size": args.group_size, "act_order": args.act_order or None, "scaling": args.fp8_scaling,
             "calib_data": str(Path(args.calib_data).resolve()) if args.calib_data else None,
             "calib_size": args.calib_size, "calib_seq_len": args.calib_seq_len}
    return {key: value for key, value in given.items() if value is not None}


def _kv_cache_scales(args: argparse.Namespace) -> str:
    if args.kv_cache_scales is not None and args.kv_cache_dtype != "fp8":
        from ingot.errors import ConfigError

        raise ConfigError(f"--kv-cache-scales {args.kv_cache_scales} applies to --kv-cache-dtype fp8 only (this "
                          f"build has --kv-cache-dtype {args.kv_cache_dtype}): add --kv-cache-dtype fp8 or drop "
                          "--kv-cache-scales")
    return args.kv_cache_scales or "calibrated"


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def register(subparsers) -> None:
    p = subparsers.add_parser("build", parents=[make_build_parser(add_help=False)], help=HELP,
                              description=DESCRIPTION)
    p.set_defaults(func=run)


def build_options(args: argparse.Namespace) -> dict:
    """build_engine's keyword arguments (all but model and output_dir) from parsed `ingot build` flags;
    `ingot serve CHECKPOINT` reads a profile's flags through the same parser and this function."""
    from ingot.config import ParallelConfig, QuantConfig, SpeculativeConfig

    config = BuildConfig(dtype=args.dtype, max_batch_size=args.max_batch_size, max_input_len=args.max_input_len,
                         max_seq_len=args.max_seq_len, max_num_tokens=args.max_num_tokens,
                         tokens_per_block=args.tokens_per_block, cuda_graph_batch_sizes=args.cuda_graph_batch_sizes)
    return {"build_config": config, "device": args.device, "load_format": args.load_format,
            "parallel": ParallelConfig(tp=args.tp, pp=args.pp, pp_layers=args.pp_layers),
            "quant": QuantConfig(args.quant, _quant_params(args), args.kv_cache_dtype, _kv_cache_scales(args)),
            "speculative": SpeculativeConfig(args.speculative, args.max_draft_len), "tokenizer": args.tokenizer,
            "dummy_weights": args.dummy_weights}


def run(args: argparse.Namespace) -> int:
    from ingot.builder.build import build_engine

    started = time.perf_counter()
    options = build_options(args)
    spec = build_engine(args.model, args.output, **options)
    parallel = options["parallel"]
    ranks = f", {spec.world_size} ranks (tp {parallel.tp}, pp {parallel.pp})" if spec.world_size > 1 else ""
    print(f"built {args.output} from {args.model}: {spec.model.architecture}, {spec.dtype}, "
          f"{spec.target.describe()}{ranks}, in {time.perf_counter() - started:.1f} s")
    return 0
