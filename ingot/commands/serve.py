"""`ingot serve ENGINE`: the OpenAI-compatible and KServe v2 (Triton) HTTP server (FastAPI + uvicorn,
started here), and with --grpc-port the KServe v2 gRPC service.

`ingot serve --model-repository DIR` serves every engine under DIR/NAME/VERSION/ instead
(ingot/serve/repository.py), the models sharing --gpu-memory-fraction of the device.

`ingot serve CHECKPOINT_OR_PRESET` first picks a build profile for this machine and builds it once
into the cache (ingot/deploy/); the server starts listening only once that engine is loaded, so
/health and /v2/health/ready never answer while it builds (the build's progress is in the log)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="serve an engine over OpenAI-compatible and KServe v2 (Triton) APIs")
    p.add_argument("engine", nargs="?", default=None,
                   help="engine directory, or a checkpoint folder / .gguf / preset: built once for this "
                        "machine into the cache (the profile `ingot profiles MODEL` marks), then reused")
    p.add_argument("--model-repository", default=None, metavar="DIR",
                   help="serve every model under DIR instead: DIR/NAME/VERSION/ each an engine (`ingot build -o`), "
                        "DIR/NAME/model_config.json optionally its version_policy and KV-cache memory")
    p.add_argument("--gpu-memory-fraction", type=float, default=0.9, metavar="F",
                   help="the server's share of the device's memory (the host's RAM on CPU), split among the "
                        "models: weights, activations and KV caches; a load that would exceed it is refused")
    p.add_argument("--kv-cache-fraction", type=float, default=None, metavar="F",
                   help="each model version's KV cache: this fraction of the device's memory (default: an "
                        "equal share of what the weights leave; a model's model_config.json overrides it)")
    p.add_argument("--kv-cache-bytes", type=int, default=None, metavar="N",
                   help="each model version's KV cache in bytes, instead of --kv-cache-fraction")
    p.add_argument("--profile", default=None, metavar="NAME",
                   help="with a checkpoint or preset: build this profile (one `ingot profiles MODEL` lists) "
                        "instead of the one chosen for this machine")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=None, metavar="PORT",
                   help="also serve the KServe v2 / Triton GRPCInferenceService on PORT (same host, engine and "
                        "event loop as HTTP)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on /v1, tokenizer and /metrics routes (visible in ps: "
                        "prefer --api-key-file or the INGOT_API_KEY environment variable)")
    p.add_argument("--api-key-file", default=None, metavar="FILE", help="read the API key from FILE (first line)")
    p.add_argument("--metrics-public", action="store_true",
                   help="serve /metrics without the API key (it shows traffic and KV-cache use)")
    p.add_argument("--served-model-name", default=None,
                   help="the model name clients send (default: the engine directory's name; for a checkpoint "
                        "or preset, its folder, file or preset name)")
    p.add_argument("--max-queue", type=int, default=None, metavar="N",
                   help="answer 429 at once while N prompts are in flight (a request holds one per prompt; default: "
                        "no limit)")
    p.add_argument("--shutdown-timeout", type=float, default=5.0, metavar="S",
                   help="on SIGINT/SIGTERM, give open requests S seconds to finish before aborting them")
    _add_limits(p)
    p.add_argument("--device", default=None)
    p.add_argument("--draft-engine", default=None, metavar="DIR",
                   help="the draft model's engine, for a target built with --speculative draft_target")
    p.add_argument("--engine-in-process", action="store_true",
                   help="run the engine on a thread of the server's process instead of a process of its own "
                        "(slower under load: the two share one GIL; for debugging and comparison)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument("--skip-verify", action="store_true",
                   help="load the weights without checking their checksums (trusted engines, faster start)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ingot.errors import ConfigError
    from ingot.serve.server import serve

    if args.skip_verify:
        from ingot.envs import set_skip_verify

        set_skip_verify()
    if args.max_queue is not None and args.max_queue < 1:
        raise ConfigError(f"--max-queue {args.max_queue} must be >= 1")
    limits = _limits(args)  # before a build or load, which may take minutes
    api_key = resolve_api_key(args.api_key, args.api_key_file)
    kv = _kv_request(args)
    if args.model_repository is not None:
        _check_repository_args(args)
        engine_dir, default_name = None, None
    elif args.engine is None:
        raise ConfigError("give an ENGINE to serve, or --model-repository DIR")
    else:
        engine_dir, default_name = _engine_dir(args.engine, args.device, args.profile)
    return serve(engine_dir, host=args.host, port=args.port, api_key=api_key,
                 metrics_public=args.metrics_public,
                 served_model_name=args.served_model_name or default_name, max_queue=args.max_queue, device=args.device,
                 log_level=args.log_level, shutdown_timeout=args.shutdown_timeout, draft_engine=args.draft_engine,
                 limits=limits, engine_in_process=args.engine_in_process,
                 grpc_port=args.grpc_port, model_repository=args.model_repository,
                 gpu_memory_fraction=args.gpu_memory_fraction, kv=kv)


def _kv_request(args):
    from ingot.errors import ConfigError
    from ingot.serve.repository import KVRequest

    fraction, size = args.kv_cache_fraction, args.kv_cache_bytes
    if fraction is not None and size is not None:
        raise ConfigError("give --kv-cache-fraction or --kv-cache-bytes, not both")
    if fraction is not None and not 0 < fraction <= 1:
        raise ConfigError(f"--kv-cache-fraction {fraction} must be in (0, 1] (a fraction of the device's memory)")
    if size is not None and size < 1:
        raise ConfigError(f"--kv-cache-bytes {size} must be >= 1")
    if not 0 < args.gpu_memory_fraction <= 1:
        raise ConfigError(f"--gpu-memory-fraction {args.gpu_memory_fraction} must be in (0, 1]")
    return KVRequest(fraction, size)


def _check_repository_args(args) -> None:
    """--model-repository names its models and engines itself: the one-engine flags do not apply."""
    from ingot import envs
    from ingot.errors import ConfigError

    given = [flag for flag, value in (("ENGINE", args.engine), ("--served-model-name", args.served_model_name),
                                      ("--profile", args.profile), ("--draft-engine", args.draft_engine))
             if value is not None]
    if given:
        raise ConfigError(f"--model-repository serves the models under {args.model_repository} by their folder "
                          f"names; drop {', '.join(given)}")
    if envs.torchrun_rank() is not None:
        raise ConfigError("--model-repository starts each engine's ranks itself; run it without torchrun")


LIMIT_HELP = {  # each a ServeLimits field (ingot/serve/limits.py), where the defaults live
    "max_prompts_per_request": ("N", int, "prompts one /v1/completions request may carry (400 above; each "
                                          "also takes a --max-queue slot)"),
    "max_sequences_per_request": ("N", int, "sequences one request may add, n x prompts (400 above)"),
    "max_stop_strings": ("N", int, "stop strings one request may give (400 above)"),
    "max_stop_string_chars": ("N", int, "characters in one stop string (400 above)"),
    "max_body_bytes": ("N", int, "largest request body accepted, in bytes (413 above)"),
    "max_header_bytes": ("N", int, "largest request line and headers accepted, in bytes (431 above)"),
    "read_timeout": ("S", float, "seconds a client has to send a request's headers, and again its body (408)"),
}


def _add_limits(p) -> None:
    from ingot.serve.limits import ServeLimits, flag

    defaults = ServeLimits()
    for name, (metavar, kind, text) in LIMIT_HELP.items():
        p.add_argument(flag(name), type=kind, default=None, metavar=metavar,
                       help=f"{text}; default {getattr(defaults, name)}")


def _limits(args: argparse.Namespace):
    """The ServeLimits of the flags given (the others keep their defaults); ConfigError naming a bad flag."""
    from ingot.serve.limits import ServeLimits

    given = {name: getattr(args, name) for name in LIMIT_HELP if getattr(args, name) is not None}
    return ServeLimits(**given)


def _engine_dir(model: str, device: str | None, profile: str | None):
    """(engine directory, default served model name): an engine as given, named by serve as its folder;
    else the cached engine of MODEL's profile for this machine, named as MODEL's folder, file or preset."""
    from pathlib import Path

    from ingot.engine_format import ENGINE_JSON
    from ingot.errors import ConfigError

    if (Path(model) / ENGINE_JSON).is_file():
        if profile is not None:
            raise ConfigError(f"--profile is for a checkpoint or preset; {model} is a built engine already")
        from ingot.commands.common import engine_or_build

        return engine_or_build(model, device), None
    from ingot.deploy import deploy
    from ingot.parallel.launch import become_worker_if_launched

    # Under torchrun every rank gets here: one builds (the cache's lock), the others wait and reuse.
    engine = deploy(model, device, profile)
    become_worker_if_launched(engine, device)
    path = Path(model)
    return engine, (path.stem if path.suffix == ".gguf" else path.name) or model


def resolve_api_key(flag: str | None, key_file: str | None) -> str | None:
    """The key from --api-key, else --api-key-file, else INGOT_API_KEY; at most one of the flags."""
    from pathlib import Path

    from ingot import envs
    from ingot.errors import ConfigError

    if flag is not None and key_file is not None:
        raise ConfigError("give --api-key or --api-key-file, not both")
    if key_file is not None:
        try:
            lines = Path(key_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--api-key-file {key_file}: cannot read it ({exc})") from None
        key = lines[0].strip() if lines else ""
        if not key:
            raise ConfigError(f"--api-key-file {key_file}: the first line is empty; write the key there")
        return key
    return flag if flag is not None else envs.api_key()
