"""`ingot plan`: what fits, which parallelism, rough tok/s, and the build command.

    ingot plan --model 70b --gpu h100 --precision fp8 --isl 8192 --osl 2048 --batch 64
    ingot plan --model path/to/config.json --gpu l40s --precision int4_awq --json
    ingot plan --web --port 8765
"""

from __future__ import annotations

import argparse
import json

from ingot.errors import ConfigError
from ingot.plan.gpus import gpu_names
from ingot.plan.planner import DEFAULT_CONCURRENCY, DEFAULT_ISL, DEFAULT_OSL, make_plan
from ingot.plan.precisions import KV_DTYPES, PRECISIONS
from ingot.plan.presets import preset_names
from ingot.plan.report import render

DEFAULT_PORT = 8765


def register(subparsers: argparse._SubParsersAction) -> None:
    # No argparse `choices`: the planner's own errors list the choices, the same on the CLI
    # and the web API, and --model also takes paths.
    parser = subparsers.add_parser(
        "plan", help="size a deployment: fit, layout, tok/s and the build command",
        description="First-order sizing: memory per GPU for each TP/PP(/EP) layout, KV capacity, "
                    "decode/prefill throughput and the `ingot build` command.")
    parser.add_argument("--model", help=f"preset ({', '.join(preset_names())}), config.json or engine dir")
    parser.add_argument("--gpu", help=f"one of {', '.join(gpu_names())}")
    parser.add_argument("--num-gpus", type=int, default=None,
                        help="exactly this many GPUs (default: try 1, 2, 4, ... until it fits)")
    parser.add_argument("--precision", default=None, help=f"one of {', '.join(PRECISIONS)} (default bf16)")
    parser.add_argument("--kv-cache-dtype", default="auto", help=f"one of {', '.join(KV_DTYPES)}")
    parser.add_argument("--isl", type=int, default=DEFAULT_ISL, help="input (prompt) length, tokens")
    parser.add_argument("--osl", type=int, default=DEFAULT_OSL, help="output length, tokens")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--batch", type=int, default=None, help="max batch size (concurrent sequences)")
    group.add_argument("--concurrency", type=int, default=None, help="requests in flight at once")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("--web", action="store_true", help="serve the interactive page instead")
    parser.add_argument("--host", default="127.0.0.1", help="with --web: address to bind")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="with --web: port (0 = any free)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.web:
        from ingot.plan.web import serve_forever  # http.server only when asked for

        return serve_forever(args.host, args.port)
    if not args.model or not args.gpu:
        missing = " and ".join(f"--{n}" for n in ("model", "gpu") if not getattr(args, n))
        raise ConfigError(f"{missing} required: --model one of {', '.join(preset_names())} or a path; "
                          f"--gpu one of {', '.join(gpu_names())}")
    concurrency = args.batch if args.batch is not None else args.concurrency
    plan = make_plan(model=args.model, gpu=args.gpu, precision=args.precision,
                     kv_cache_dtype=args.kv_cache_dtype, isl=args.isl, osl=args.osl,
                     concurrency=DEFAULT_CONCURRENCY if concurrency is None else concurrency,
                     num_gpus=args.num_gpus)
    if args.json:
        print(json.dumps(plan, indent=2))
    else:
        print(render(plan))
    return 0
