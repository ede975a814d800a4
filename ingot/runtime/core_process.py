"""The engine core in a process of its own: the server's default (`ingot serve`), as vLLM v1 and
SGLang do it.

    API process                                     core process (python -m ingot.runtime.core_process)
    event loop: HTTP, SSE, tokenize   ──commands──▶  EngineCore: schedule, execute, detokenize,
    writer thread (sends)             ◀─StepMessage─  one message per step, every request's delta
    reader thread (receives, hands deltas to the event loops)

On one process the engine's host work (scheduling, input preparation, graph launch) and the
server's per-token work (SSE, JSON, HTTP) share one GIL, and each waits for the other: the GPU
idles whenever the engine thread waits. Apart, each has its own interpreter. The two talk over a
socket pair (multiprocessing's Connection framing) of pickled batches: commands (add / abort /
shutdown) in, one StepMessage per step out (core_records.py); a blocking send never stalls the
event loop (the writer thread does it).

The core is a fresh interpreter (subprocess, not multiprocessing: a script that makes an AsyncLLM
needs no `if __name__ == "__main__"` guard), so it can spawn the worker ranks of a multi-rank
engine; it stops them when it stops. It ignores SIGINT (Ctrl-C reaches the whole process group;
the API process decides how to drain) and cleans up on SIGTERM. If the API process dies, the
socket closes and the core exits. If the core dies or its engine fails, the API side reports why (CoreProcess.failure,
naming the process and its exit code, or the engine's error) and the server stops.
"""

from __future__ import annotations

import atexit
import logging
import os
import pickle
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import ingot
from ingot.config import CacheConfig
from ingot.errors import EngineError, IngotError
from ingot.runtime.core_records import AddRequest, StepMessage
from ingot.runtime.stats import EngineStats

logger = logging.getLogger("ingot")

IDLE_POLL_S = 0.5  # an idle core checks this often that its worker ranks are alive
SHUTDOWN_TIMEOUT_S = 30.0  # for the core to stop its engine and worker ranks


@dataclass(frozen=True)
class CoreConfig:
    """What the core process needs to open the engine (picklable: sent to the spawned process)."""

    engine_dir: str
    cache: CacheConfig | None
    device: str | None
    draft_engine: str | None
    log_level: int  # the API process's: the core logs what it would have logged, the same way
    log_format: str | None = None


class CoreProcess:
    """The API process's handle on the core: start it, send it commands, receive its steps.

    on_message(StepMessage) and on_failure() run on the reader thread; they must be quick.
    """

    def __init__(self, config: CoreConfig, on_message: Callable[[StepMessage], None],
                 on_failure: Callable[[], None]) -> None:
        ours, theirs = socket.socketpair()
        package_root = str(Path(ingot.__file__).resolve().parent.parent)
        env = {**os.environ,
               "PYTHONPATH": os.pathsep.join(filter(None, (package_root, os.environ.get("PYTHONPATH"))))}
        self._process = subprocess.Popen([sys.executable, "-m", "ingot.runtime.core_process", str(theirs.fileno())],
                                         pass_fds=(theirs.fileno(),), env=env)
        theirs.close()  # the core holds the only other end: its exit closes the pipe
        self._conn = Connection(ours.detach())
        _send(self._conn, config)
        self._on_message, self._on_failure = on_message, on_failure
        self.stats = EngineStats()
        self.error: str | None = None
        self._closing = False
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._writer: threading.Thread | None = None  # started once the engine is loaded
        atexit.register(self.shutdown)  # the core and its worker ranks stop with this process

    @property
    def pid(self) -> int:
        return self._process.pid

    def wait_ready(self) -> None:
        """Wait until the core has loaded the engine (minutes, for a large one); raise its error if it
        could not, and start the threads that talk to it."""
        while not self._conn.poll(1.0) and self._process.poll() is None:
            pass
        try:
            kind, payload = pickle.loads(self._conn.recv_bytes())
        except (EOFError, OSError):
            raise EngineError(f"{self._exited()} while loading the engine; see its output above") from None
        if kind == "failed":
            self._wait(SHUTDOWN_TIMEOUT_S)
            raise payload
        self.stats = payload
        threading.Thread(target=self._read, name="ingot-core-reader", daemon=True).start()
        self._writer = threading.Thread(target=self._write, name="ingot-core-writer", daemon=True)
        self._writer.start()

    def add(self, requests: list[AddRequest]) -> None:
        self._outbox.put(("add", requests))

    def abort(self, request_ids: list[str] | None) -> None:
        """Abort these engine requests (None: every one in flight); each gets its final delta."""
        self._outbox.put(("abort", request_ids))

    def failure(self) -> str | None:
        if self.error is None and not self._closing and self._process.poll() is not None:
            return self._exited()
        return self.error

    def shutdown(self) -> None:
        """Stop the core (it stops its worker ranks), then the threads talking to it."""
        if self._closing:
            return
        self._closing = True
        atexit.unregister(self.shutdown)
        if self._writer is not None:
            self._outbox.put(("shutdown", None))
            self._outbox.put(None)  # the writer's last item
        elif self._process.poll() is None:  # still loading: it reads this once it is ready
            try:
                _send(self._conn, [("shutdown", None)])
            except OSError:
                pass
        if not self._wait(SHUTDOWN_TIMEOUT_S):
            logger.warning("the engine core process (pid %d) did not stop in %.0f s; terminating it", self.pid,
                           SHUTDOWN_TIMEOUT_S)
            self._process.terminate()
            if not self._wait(10):
                self._process.kill()
                self._wait(5)
        self._conn.close()

    def _wait(self, timeout: float) -> bool:
        try:
            self._process.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def _exited(self) -> str:
        self._wait(2)  # give the exit a moment to be reaped, for its code
        code = self._process.returncode
        how = f"was killed by signal {signal.Signals(-code).name}" if code is not None and code < 0 else \
            f"exited with code {code}"
        return f"the engine core process (pid {self.pid}) {how}; nothing more can be generated without it"

    def _read(self) -> None:
        try:
            while True:
                kind, payload = pickle.loads(self._conn.recv_bytes())
                if kind == "step":
                    self.stats = payload.stats
                    self._on_message(payload)
                else:  # "error": the engine failed; the core has stopped
                    self._fail(f"the engine core stopped: {payload}")
                    return
        except (EOFError, OSError):
            if not self._closing:
                self._fail(self._exited())

    def _fail(self, message: str) -> None:
        self.error = message
        logger.error("%s", message)
        self._on_failure()

    def _write(self) -> None:
        """Send what the event loop queued, in batches; the pipe may block, the event loop never does."""
        while True:
            batch = [self._outbox.get()]
            while True:
                try:
                    batch.append(self._outbox.get_nowait())
                except queue.Empty:
                    break
            last = batch[-1] is None
            commands = [command for command in batch if command is not None]
            try:
                if commands:
                    self._conn.send_bytes(pickle.dumps(commands, protocol=pickle.HIGHEST_PROTOCOL))
            except OSError:  # the core is gone: the reader reports it
                return
            if last:
                return


# ---- the core process ----

def _core_main(conn: Connection) -> None:
    config: CoreConfig = pickle.loads(conn.recv_bytes())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    logging.basicConfig(level=config.log_level, format=config.log_format or "%(levelname)s %(name)s: %(message)s",
                        force=True)
    from ingot.runtime.engine import LLMEngine
    from ingot.runtime.engine_core import EngineCore
    from ingot.runtime.gc_heap import freeze_startup_heap

    try:
        engine = LLMEngine(Path(config.engine_dir), config.cache, device=config.device,
                           draft_engine=config.draft_engine)
    except BaseException as exc:  # noqa: BLE001 - the API process raises it
        if not isinstance(exc, IngotError):  # a bug, not a bad engine: keep its traceback
            logger.exception("the engine core could not load the engine")
        _send(conn, ("failed", _picklable(exc)))
        return
    try:
        freeze_startup_heap()
        _send(conn, ("ready", engine.stats))
        _serve(conn, EngineCore(engine))
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass  # the API process is gone: nobody to answer
    except BaseException as exc:  # the engine failed: say why, then stop its workers and exit
        logger.exception("engine core failed")
        try:
            _send(conn, ("error", f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass
        raise SystemExit(1) from None
    finally:
        engine.shutdown()


def _serve(conn, core) -> None:
    """The core's loop: take every command waiting, run a step if there is work, send what changed.
    Sending blocks only while the API process is a whole socket buffer behind (backpressure)."""
    idle_since = time.monotonic()
    while True:
        deltas = []
        while conn.poll(0 if core.has_work or deltas else IDLE_POLL_S):
            for kind, payload in pickle.loads(conn.recv_bytes()):
                if kind == "shutdown":
                    return
                deltas += core.add(payload) if kind == "add" else core.abort(payload)
        stepped = core.has_work
        if stepped:
            deltas += core.step()
        if deltas or stepped:
            _send(conn, ("step", StepMessage(deltas, core.engine.stats)))
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since >= IDLE_POLL_S:
            _check_workers(core.engine)
            idle_since = time.monotonic()


def _check_workers(engine) -> None:
    """A worker rank that dies while nothing runs is noticed here (a step would notice it at once)."""
    if engine.workers is not None:
        engine.workers.check_alive()


def log_settings() -> tuple[int, str | None]:
    """This process's logging level and its root handler's format, for the core to copy."""
    root = logging.getLogger()
    formatter = root.handlers[0].formatter if root.handlers else None
    return root.getEffectiveLevel(), getattr(formatter, "_fmt", None)


def _send(conn, message: tuple) -> None:
    conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def _picklable(exc: BaseException) -> BaseException:
    """The exception itself when it survives pickling, else an EngineError with its text."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001
        return EngineError(f"{type(exc).__name__}: {exc}")


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit("the engine core process was sent SIGTERM")


if __name__ == "__main__":
    _core_main(Connection(int(sys.argv[1])))
