"""Starting the ranks of a multi-rank engine, and talking to them from rank 0.

One host: `LLM(engine)`, `ingot serve` and `ingot bench` spawn one worker process per rank other
than 0 (each on its own GPU, or on the CPU with gloo); this process is rank 0: it schedules,
samples and runs its own slice. Several hosts: every process is started by `torchrun` (or any
launcher that sets RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT); global rank 0 runs the API server
and the others become workers (become_worker_if_launched). Either way rank 0 broadcasts each step's
ForwardPlan (ingot/parallel/stage.py) and every rank runs it on its slice.

A worker that dies makes rank 0 fail its next step with an EngineError naming the rank (the
engine loop then stops and the server reports unhealthy); a rank that stops answering fails the
collective after `timeout_s`. Shutting down sends the stop plan and joins every worker.
"""

from __future__ import annotations

import logging
import multiprocessing
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from ingot import envs
from ingot.config import CacheConfig
from ingot.errors import EngineError
from ingot.parallel.mapping import ParallelMapping
from ingot.parallel.stage import ForwardPlan
from ingot.parallel.state import ParallelState, destroy, init_process_groups

logger = logging.getLogger("ingot")

DEFAULT_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class WorkerArgs:
    """What a worker needs to join the job and load its slice (picklable: sent to spawned processes)."""

    engine_dir: str
    master_addr: str
    master_port: int
    device_kind: str  # "cpu" | "cuda"
    cache: CacheConfig
    enforce_eager: bool
    attention_backend: str
    timeout_s: float


class WorkerGroup:
    """Rank 0's handle on the other ranks."""

    def __init__(self, state: ParallelState, processes: list | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.state = state
        self.processes = processes or []  # (rank, Process) started here; empty under torchrun
        self.state_timeout_s = timeout_s

    def broadcast(self, plan: ForwardPlan) -> None:
        self.check_alive()
        dist.broadcast_object_list([plan], src=0, group=self.state.control)

    def check_alive(self) -> None:
        for rank, process in self.processes:
            if not process.is_alive():
                raise EngineError(f"worker rank {rank} (pid {process.pid}) exited with code {process.exitcode}; "
                                  "the engine cannot go on without it: see that process's output")

    def explain(self, exc: Exception, wait_s: float = 2.0) -> EngineError:
        """Why a collective failed: a worker that died (given a moment to be reaped), else the error."""
        for _, process in self.processes:
            process.join(wait_s / max(len(self.processes), 1))
        try:
            self.check_alive()
        except EngineError as dead:
            return dead
        return EngineError(f"a collective with the worker ranks failed ({exc}); "
                           f"a rank is stuck or unreachable (timeout {self.state_timeout_s:.0f} s)")

    def agree_min(self, value: int) -> int:
        """The smallest `value` over all ranks (e.g. KV blocks every rank's memory can hold)."""
        from ingot.parallel.worker import _agree_min

        return _agree_min(value, self.state)

    def shutdown(self, timeout: float = 10.0) -> None:
        try:
            if all(p.is_alive() for _, p in self.processes):
                dist.broadcast_object_list([ForwardPlan(stop=True)], src=0, group=self.state.control)
        except Exception as exc:  # a broken group at shutdown: the processes are stopped below anyway
            logger.warning("could not tell the workers to stop (%s); terminating them", exc)
        for _, process in self.processes:
            process.join(timeout)
            if process.is_alive():
                process.terminate()
                process.join(timeout)
        destroy()


def device_of(device_kind: str, local_rank: int) -> torch.device:
    return torch.device(f"cuda:{local_rank}") if device_kind == "cuda" else torch.device("cpu")


def start_workers(engine_dir: Path, mapping: ParallelMapping, device_kind: str, cache: CacheConfig,
                  enforce_eager: bool, attention_backend: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> WorkerGroup:
    """Rank 0's side of a start: under torchrun, join the job it set up; else spawn ranks 1..N-1 here."""
    launched = envs.torchrun_rank()
    if launched is not None:
        rank, world, addr, port, local_rank = launched
        if world != mapping.world_size:
            raise EngineError(f"torchrun started {world} processes but the engine has {mapping.world_size} ranks "
                              f"(tp={mapping.config.tp}, pp={mapping.config.pp}); launch with that many")
        state = init_process_groups(rank, mapping, device_of(device_kind, local_rank), addr, port, timeout_s)
        return WorkerGroup(state, timeout_s=timeout_s)
    if device_kind == "cuda" and torch.cuda.device_count() < mapping.world_size:
        raise EngineError(f"the engine has {mapping.world_size} ranks, one GPU each, but this host has "
                          f"{torch.cuda.device_count()} GPU(s); run it across hosts with torchrun")
    port = _free_port()
    args = WorkerArgs(str(engine_dir), "127.0.0.1", port, device_kind, cache, enforce_eager, attention_backend,
                      timeout_s)
    context = multiprocessing.get_context("spawn")
    processes = []
    for rank in range(1, mapping.world_size):
        process = context.Process(target=_worker_entry, args=(rank, rank, args), name=f"ingot-rank-{rank}",
                                  daemon=True)
        process.start()
        processes.append((rank, process))
    try:
        state = init_process_groups(0, mapping, device_of(device_kind, 0), "127.0.0.1", port, timeout_s)
    except Exception as exc:
        dead = [f"rank {rank} exited with code {p.exitcode}" for rank, p in processes if not p.is_alive()]
        for _, process in processes:
            process.terminate()
        raise EngineError(f"the worker ranks did not join within {timeout_s:.0f} s"
                          f"{' (' + '; '.join(dead) + ')' if dead else ''}: {exc}") from exc
    return WorkerGroup(state, processes, timeout_s)


def _worker_entry(rank: int, local_rank: int, args: WorkerArgs) -> None:
    from ingot.parallel.worker import run_worker

    run_worker(rank, local_rank, args)


def become_worker_if_launched(engine_dir: str | Path, device: str | None = None, cache: CacheConfig | None = None,
                              enforce_eager: bool = False) -> None:
    """Under torchrun, every rank but 0 serves as a worker until rank 0 stops, then exits the process."""
    launched = envs.torchrun_rank()
    if launched is None or launched[0] == 0:
        return
    import sys

    from ingot.parallel.worker import run_worker

    rank, _, addr, port, local_rank = launched
    kind = device or ("cuda" if torch.cuda.is_available() else "cpu")
    run_worker(rank, local_rank, WorkerArgs(str(engine_dir), addr, port, kind.split(":")[0], cache or CacheConfig(),
                                            enforce_eager, "auto", DEFAULT_TIMEOUT_S))
    sys.exit(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
