"""Start the server: load its models (one engine, or every model of a repository: models.py), then
run uvicorn (and, with grpc_port, the KServe v2 gRPC service on the same event loop) until
SIGINT/SIGTERM.

Each engine core runs in a process of its own (ingot/runtime/core_process.py; engine_in_process
keeps them on threads of this one). The models are loaded before the port opens, so /health
answering means ready. Shutting down, in order:

    1. the signal's handler marks the server draining, at once: /health and KServe's ready answer 503
       (UNAVAILABLE), new generation requests get 503; the port stays open, so that a load balancer
       reads "not ready" rather than "connection refused";
    2. open requests get shutdown_timeout seconds to finish (the wait ends when none is left; a second
       signal ends it at once);
    3. every request still running is aborted, so each stream ends with a finish_reason "abort" chunk,
       an error event and [DONE]; their answers get DRAIN_MARGIN_S to go out;
    4. uvicorn closes the port and its connections, gRPC stops;
    5. the engines stop, while the event loop still runs (their last messages find it open); then
       the loop closes.

If a loaded engine fails on its own (its core process dies, its loop stops on an error, a worker
rank dies), a watchdog reports why and shuts the server down the same way; the process then exits
with status 1.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import sys
import threading
import time
from pathlib import Path

import uvicorn

from ingot.serve.limits import ServeLimits

WATCHDOG_INTERVAL_S = 0.5
DRAIN_POLL_S = 0.05
DRAIN_MARGIN_S = 5.0  # after the abort, for the aborted answers to go out, before uvicorn cancels them


def serve(engine_dir: str | Path | None, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          served_model_name: str | None = None, max_queue: int | None = None, device: str | None = None,
          log_level: str = "info", shutdown_timeout: float = 5.0, draft_engine: str | Path | None = None,
          limits: ServeLimits | None = None, metrics_public: bool = False, engine_in_process: bool = False,
          grpc_port: int | None = None, model_repository: str | Path | None = None,
          gpu_memory_fraction: float = 0.9, kv=None) -> int:
    """Serve engine_dir as one model (named served_model_name, else its folder), or every model of
    model_repository; kv (a repository.KVRequest) is each model's KV-cache memory unless its
    model_config.json says otherwise."""
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
        config = uvicorn.Config(build_app(state), host=host, port=port, log_level=log_level,
                                timeout_graceful_shutdown=DRAIN_MARGIN_S,
                                http=functools.partial(GuardedH11Protocol, limits=limits, count=state.count_response),
                                h11_max_incomplete_event_size=limits.max_header_bytes)
        grpc_at = "" if grpc_port is None else f", gRPC (KServe v2) on {host}:{grpc_port}"
        names = ", ".join(f"'{m.key}'" for m in models.loaded())
        print(f"ingot serve: {names} on http://{host}:{port}/v1 and /v2{grpc_at} (Ctrl-C to stop)",
              file=sys.stderr, flush=True)
        # A signal before uvicorn takes the signals over (and after it gives them back) ends the process
        # through the finally below.
        signal.signal(signal.SIGTERM, _exit_normally)
        server = DrainingServer(config, state, shutdown_timeout)
        failed = _watch(models, server)
        with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
            runner.run(_run(server, state, host, grpc_port))
    except KeyboardInterrupt:
        pass
    finally:
        models.shutdown()  # a no-op once _run has stopped them
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


async def _run(server: "DrainingServer", state, host: str, grpc_port: int | None) -> None:
    """uvicorn (and gRPC) until drained, then the engines stop: all on this event loop, before it closes."""
    grpc_server = None
    try:
        if grpc_port is not None:
            from ingot.serve import kserve_grpc

            grpc_server = await kserve_grpc.start(state, host, grpc_port)
        await server.serve()
    finally:
        if grpc_server is not None:
            await grpc_server.stop(grace=1.0)
        await asyncio.to_thread(state.models.shutdown)


class DrainingServer(uvicorn.Server):
    """uvicorn's Server whose SIGINT/SIGTERM drains first (the module's steps 1-3), keeping the port
    open meanwhile; uvicorn alone closes the port at once and re-raises the signal once it has stopped."""

    def __init__(self, config: uvicorn.Config, state, shutdown_timeout: float) -> None:
        super().__init__(config)
        self.state, self.shutdown_timeout = state, shutdown_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._hurry = False  # a second signal: abort what is open now
        self._drain_task: asyncio.Task | None = None

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame) -> None:
        """The signal's handler: on the event loop's thread, between two of its steps. No I/O here
        (a print could re-enter one the main thread was making)."""
        if self.state.draining:
            self._hurry = True
        self.begin_shutdown()

    def begin_shutdown(self) -> bool:
        """Step 1 now, then the drain on the event loop; from any thread. False when it cannot begin yet
        (the event loop is not running) or has begun already."""
        if self.state.draining or self._loop is None:
            return False
        self.state.draining = True
        self._loop.call_soon_threadsafe(self._start_drain)
        return True

    def _start_drain(self) -> None:
        self._drain_task = asyncio.create_task(self._drain())  # held: the loop keeps only weak references

    async def _drain(self) -> None:
        metrics = self.state.metrics
        print(f"ingot serve: draining: {metrics.in_flight} open requests have {self.shutdown_timeout:g} s to finish",
              file=sys.stderr, flush=True)
        deadline = time.monotonic() + self.shutdown_timeout
        while metrics.in_flight and not self._hurry and time.monotonic() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)
        deadline = time.monotonic() + DRAIN_MARGIN_S
        while True:  # again and again: a request still being tokenized at the first abort reaches the engine after it
            self.state.models.abort_all()
            if not metrics.in_flight or time.monotonic() >= deadline:
                break
            await asyncio.sleep(DRAIN_POLL_S)
        self.should_exit = True


def _watch(models, server: DrainingServer) -> threading.Event:
    """A daemon thread that shuts the server down when a loaded engine can no longer serve."""
    failed = threading.Event()

    def run() -> None:
        while not server.state.draining:
            failure = models.failure()
            if failure is not None and server.begin_shutdown():
                print(f"ingot serve: {failure}; shutting down", file=sys.stderr, flush=True)
                failed.set()
                return
            threading.Event().wait(WATCHDOG_INTERVAL_S)

    threading.Thread(target=run, name="ingot-serve-watchdog", daemon=True).start()
    return failed


def _exit_normally(signum, frame) -> None:
    raise KeyboardInterrupt
