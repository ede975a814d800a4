"""Start the server: load its models (one engine, or every model of a repository: models.py), then
run uvicorn (and, with grpc_port, the KServe v2 gRPC service on the same event loop) until
SIGINT/SIGTERM.

Each engine core runs in a process of its own (ingot/runtime/core_process.py; engine_in_process
keeps them on threads of this one). The models are loaded before the port opens, so /health
answering means ready. On a signal,
uvicorn stops accepting connections and the server drains: new generation requests on open
connections get 503, open requests get shutdown_timeout seconds to finish, then every request
still running is aborted, so each stream ends with a finish_reason "abort" chunk, an error event
and [DONE] (uvicorn's own deadline, DRAIN_MARGIN_S later, is never the one that cancels them);
the engine core is shut down last, whatever happened.
If a loaded engine fails on its own (its core process dies, its loop stops on an error, a worker
rank dies), a watchdog
reports why and stops the server the same way, and the process exits with status 1.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import sys
import threading
from pathlib import Path

from ingot.serve.limits import ServeLimits

WATCHDOG_INTERVAL_S = 0.5
DRAIN_MARGIN_S = 5.0  # between aborting what still runs and uvicorn's forced cancellation


def serve(engine_dir: str | Path | None, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          served_model_name: str | None = None, max_queue: int | None = None, device: str | None = None,
          log_level: str = "info", shutdown_timeout: float = 5.0, draft_engine: str | Path | None = None,
          limits: ServeLimits | None = None, metrics_public: bool = False, engine_in_process: bool = False,
          grpc_port: int | None = None, model_repository: str | Path | None = None,
          gpu_memory_fraction: float = 0.9, kv=None) -> int:
    """Serve engine_dir as one model (named served_model_name, else its folder), or every model of
    model_repository; kv (a repository.KVRequest) is each model's KV-cache memory unless its
    model_config.json says otherwise."""
    import uvicorn

    from ingot.serve.app import ServerState, build_app
    from ingot.serve.http_protocol import GuardedH11Protocol

    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    models = _registry(engine_dir, served_model_name, device, draft_engine, engine_in_process, model_repository,
                       gpu_memory_fraction, kv, shutdown_timeout)
    failed = threading.Event()
    try:
        models.start()
        limits = limits or ServeLimits()
        state = ServerState(models, api_key=api_key, max_queue=max_queue, metrics_public=metrics_public,
                            limits=limits)
        app = build_app(state)
        config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                timeout_graceful_shutdown=shutdown_timeout + DRAIN_MARGIN_S,
                                http=functools.partial(GuardedH11Protocol, limits=limits),
                                h11_max_incomplete_event_size=limits.max_header_bytes)
        grpc_at = "" if grpc_port is None else f", gRPC (KServe v2) on {host}:{grpc_port}"
        names = ", ".join(f"'{m.key}'" for m in models.loaded())
        print(f"ingot serve: {names} on http://{host}:{port}/v1 and /v2{grpc_at} (Ctrl-C to stop)",
              file=sys.stderr, flush=True)
        # uvicorn re-raises the signal it caught once it has shut down; make SIGTERM a normal exit.
        signal.signal(signal.SIGTERM, _exit_normally)
        server = uvicorn.Server(config)
        failed = _watch(models, server, state, shutdown_timeout)
        if grpc_port is None:
            server.run()
        else:
            with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
                runner.run(_serve_with_grpc(server, state, host, grpc_port))
    except KeyboardInterrupt:
        pass
    finally:
        models.shutdown()
    print("ingot serve: stopped", file=sys.stderr, flush=True)
    return 1 if failed.is_set() else 0


def _registry(engine_dir, served_model_name, device, draft_engine, engine_in_process, model_repository,
              gpu_memory_fraction, kv, drain_s):
    """The models to serve: a repository's, or one engine's (the one-model case), sharing one memory budget."""
    from ingot.async_llm import AsyncLLM
    from ingot.serve.memory_plan import DeviceBudget
    from ingot.serve.models import ModelRegistry
    from ingot.serve.repository import KVRequest, Repository, SingleEngine

    kv = kv or KVRequest()
    if model_repository is not None:
        source = Repository(model_repository, kv)
    else:
        source = SingleEngine(served_model_name or Path(engine_dir).resolve().name, engine_dir, kv, draft_engine)

    def start_engine(directory: Path, cache, draft: Path | None):
        return AsyncLLM(directory, cache, device=device, draft_engine=draft, in_process=engine_in_process)

    return ModelRegistry(source, start_engine, DeviceBudget.detect(device, gpu_memory_fraction), drain_s)


async def _serve_with_grpc(server, state, host: str, grpc_port: int) -> None:
    """uvicorn and the gRPC service on one event loop; gRPC stops once uvicorn has drained."""
    from ingot.serve import kserve_grpc

    grpc_server = await kserve_grpc.start(state, host, grpc_port)
    try:
        await server.serve()
    finally:
        await grpc_server.stop(grace=1.0)


def _watch(models, server, state, shutdown_timeout: float) -> threading.Event:
    """A daemon thread that stops the server when a loaded engine can no longer serve, and drains it
    when it is asked to stop."""
    failed = threading.Event()

    def run() -> None:
        while not server.should_exit:
            failure = models.failure()
            if failure is not None:
                print(f"ingot serve: {failure}; shutting down", file=sys.stderr, flush=True)
                failed.set()
                server.should_exit = True
                return
            threading.Event().wait(WATCHDOG_INTERVAL_S)
        state.draining = True
        print(f"ingot serve: draining: open requests have {shutdown_timeout:g} s to finish", file=sys.stderr,
              flush=True)
        threading.Event().wait(shutdown_timeout)
        models.abort_all()

    threading.Thread(target=run, name="ingot-serve-watchdog", daemon=True).start()
    return failed


def _exit_normally(signum, frame) -> None:
    raise KeyboardInterrupt
