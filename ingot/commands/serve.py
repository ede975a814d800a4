"""`ingot serve ENGINE`: the OpenAI-compatible HTTP server (FastAPI + uvicorn, started here)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="serve an engine over an OpenAI-compatible HTTP API")
    p.add_argument("engine", help="engine directory (or a checkpoint / preset, built into the cache first)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1 routes")
    p.add_argument("--served-model-name", default=None,
                   help="the model name clients send (default: the engine directory's name)")
    p.add_argument("--max-queue", type=int, default=None, metavar="N",
                   help="answer 429 at once while N generation requests are in flight (default: no limit)")
    p.add_argument("--shutdown-timeout", type=float, default=5.0, metavar="S",
                   help="on SIGINT/SIGTERM, give open requests S seconds to finish before aborting them")
    p.add_argument("--max-body-bytes", type=int, default=None, metavar="N",
                   help="largest generation request body accepted, in bytes (413 above; default 8 MiB)")
    p.add_argument("--device", default=None)
    p.add_argument("--draft-engine", default=None, metavar="DIR",
                   help="the draft model's engine, for a target built with --speculative draft_target")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ingot.commands.common import engine_or_build
    from ingot.errors import ConfigError
    from ingot.serve.server import serve

    if args.max_queue is not None and args.max_queue < 1:
        raise ConfigError(f"--max-queue {args.max_queue} must be >= 1")
    if args.max_body_bytes is not None and args.max_body_bytes < 1024:
        raise ConfigError(f"--max-body-bytes {args.max_body_bytes} must be >= 1024")
    return serve(engine_or_build(args.engine, args.device), host=args.host, port=args.port, api_key=args.api_key,
                 served_model_name=args.served_model_name, max_queue=args.max_queue, device=args.device,
                 log_level=args.log_level, shutdown_timeout=args.shutdown_timeout, draft_engine=args.draft_engine,
                 max_body_bytes=args.max_body_bytes)
