"""EngineLoop: runs an EngineCore on a background thread of this process (`ingot serve
--engine-in-process`, and AsyncLLM given an engine object). The server's default runs the core in a
process of its own instead (core_process.py): on a thread, the engine's host work shares one GIL
with the event loop's per-token work, and each stalls the other.

Only the loop thread touches the engine. Other threads talk to it through a command queue (add /
abort); after every step the loop hands one StepMessage to on_message, on the loop thread (it must
be quick: AsyncLLM passes it to the event loops). If the engine fails, the loop stops and calls
on_failure; every request in flight is then the caller's to end.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from ingot.errors import EngineError
from ingot.runtime.core_records import AddRequest, StepMessage
from ingot.runtime.engine import LLMEngine
from ingot.runtime.engine_core import EngineCore

logger = logging.getLogger("ingot")

IDLE_WAIT_S = 0.5


class EngineLoop:
    def __init__(self, engine: LLMEngine, on_message: Callable[[StepMessage], None],
                 on_failure: Callable[[], None]) -> None:
        self.engine = engine
        self._core = EngineCore(engine)
        self._on_message, self._on_failure = on_message, on_failure
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stopping = False
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name="ingot-engine-loop", daemon=True)
        self._thread.start()

    @property
    def stats(self):
        return self.engine.stats

    def add(self, requests: list[AddRequest]) -> None:
        """Queue validated requests (see ingot/runtime/validation.py)."""
        self._put(("add", requests))

    def abort(self, request_ids: list[str] | None) -> None:
        """Abort these engine requests (None: every one in flight); each gets its final delta."""
        self._put(("abort", request_ids))

    def failure(self) -> str | None:
        if self.error is not None:
            return f"the engine loop has stopped: {self.error}"
        workers = getattr(self.engine, "workers", None)
        if workers is not None:
            try:
                workers.check_alive()
            except EngineError as exc:
                return str(exc)
        return None

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the loop thread, then the engine's worker processes (if it has any)."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        self.engine.shutdown()

    def _put(self, command: tuple) -> None:
        self._commands.put(command)
        self._wake.set()

    def _run(self) -> None:
        try:
            while not self._stopping:
                deltas = self._apply_commands()
                if self._core.has_work:
                    deltas += self._core.step()
                elif not deltas:
                    self._wake.wait(IDLE_WAIT_S)
                    self._wake.clear()
                    continue
                self._on_message(StepMessage(deltas, self.engine.stats))
        except BaseException as exc:  # the loop must never die silently: fail every waiting request
            logger.exception("engine loop failed")
            self.error = f"{type(exc).__name__}: {exc}"
            self._on_failure()

    def _apply_commands(self) -> list[tuple]:
        deltas = []
        while True:
            try:
                kind, payload = self._commands.get_nowait()
            except queue.Empty:
                return deltas
            deltas += self._core.add(payload) if kind == "add" else self._core.abort(payload)
