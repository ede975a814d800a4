"""EngineLoop: runs LLMEngine.step() on one background thread so that requests can be added,
streamed and aborted from any thread at any time.

The engine itself is single-threaded; only the loop thread touches it. Other threads talk to it
through a command queue (add / abort) and receive outputs through per-request callbacks, which
run on the loop thread and must be quick (the async layer hands them to an event loop).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ingot.runtime.engine import LLMEngine
from ingot.runtime.outputs import RequestOutput
from ingot.runtime.request import Request

logger = logging.getLogger("ingot")

OutputCallback = Callable[[RequestOutput], None]


@dataclass
class _Add:
    requests: list[Request]
    on_output: OutputCallback


@dataclass
class _Abort:
    request_ids: list[str] | None  # None: every request in flight


class EngineLoop:
    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._callbacks: dict[str, OutputCallback] = {}
        self._wake = threading.Event()
        self._stopping = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="ingot-engine-loop", daemon=True)
        self._thread.start()

    def add(self, requests: list[Request], on_output: OutputCallback) -> None:
        """Queue already-validated requests (see LLMEngine.make_request); outputs go to on_output."""
        self._commands.put(_Add(requests, on_output))
        self._wake.set()

    def abort(self, request_ids: list[str]) -> None:
        self._commands.put(_Abort(request_ids))
        self._wake.set()

    def abort_all(self) -> None:
        """Abort every request in flight (a server that stops draining): each gets its final output."""
        self._commands.put(_Abort(None))
        self._wake.set()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the loop thread, then the engine's worker processes (if it has any)."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        self.engine.shutdown()

    def _run(self) -> None:
        try:
            while not self._stopping:
                self._apply_commands()
                if not self.engine.has_unfinished_requests():
                    self._wake.wait(0.5)
                    self._wake.clear()
                    continue
                for output in self.engine.step():
                    self._deliver(output)
        except BaseException as exc:  # the loop must never die silently: fail every waiting request
            logger.exception("engine loop failed")
            self.error = exc
            for request_id, callback in list(self._callbacks.items()):
                callback(self.engine.abort_output(request_id))

    def _apply_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if isinstance(command, _Add):
                for request in command.requests:
                    self._callbacks[request.request_id] = command.on_output
                    self.engine.submit(request)
            else:
                for request_id in list(self._callbacks) if command.request_ids is None else command.request_ids:
                    if request_id in self._callbacks:
                        self._deliver(self.engine.abort_output(request_id))

    def _deliver(self, output: RequestOutput) -> None:
        callback = self._callbacks.get(output.request_id)
        if output.finished:
            self._callbacks.pop(output.request_id, None)
        if callback is not None:
            callback(output)
