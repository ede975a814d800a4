"""The server's models: every engine it serves, addressed by name and version.

`ingot serve ENGINE` is the one-model case (one name, version 1); `--model-repository DIR` serves
each model folder's versions (repository.py). Every protocol asks this registry for an engine:

    KServe v2 / Triton   get(name, version)       no version: the highest loaded one (Triton's rule)
    OpenAI               resolve(model)           "NAME", "NAME/VERSION", or None when one model is served

and the repository routes change what it holds: load(name) reads the model's folder again and starts
the versions it selects (stopping those it no longer does), unload(name) stops them all. Each version
has an engine core of its own; the memory they share is split by memory_plan.py before any starts.
Unloading stops routing new requests to the model at once, gives open ones the drain time to
finish, aborts the rest, then stops the engine, which returns its memory.

Load and unload run on the event loop (one at a time); the engine starts and stops run on worker
threads, so serving goes on meanwhile.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ingot.config import CacheConfig
from ingot.serve.memory_plan import DeviceBudget, Footprint, demand, plan
from ingot.serve.metrics import EngineSample

logger = logging.getLogger("ingot.serve")

READY, UNAVAILABLE, LOADING, UNLOADING = "READY", "UNAVAILABLE", "LOADING", "UNLOADING"
DRAIN_POLL_S = 0.05
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

# (engine directory, its cache config, a draft engine or None) -> an AsyncLLM
StartEngine = Callable[[Path, "CacheConfig | None", "Path | None"], object]


class ModelError(Exception):
    """A model the request names is not served (404), or a load / unload failed (400)."""

    def __init__(self, message: str, status: int = 404) -> None:
        super().__init__(message)
        self.message, self.status = message, status


@dataclass
class ServedModel:
    name: str
    version: str
    llm: object  # AsyncLLM
    footprint: Footprint | None = None  # its share of the memory budget
    loaded_at: int = field(default_factory=lambda: int(time.time()))

    @property
    def key(self) -> str:
        return f"{self.name}/{self.version}"

    def resident_bytes(self) -> int | None:
        """Resident memory of its engine core process (Linux); None when the engine runs in this process."""
        pid = getattr(self.llm, "core_pid", None)
        if pid is None:
            return None
        try:
            with open(f"/proc/{pid}/statm") as statm:
                return int(statm.read().split()[1]) * _PAGE
        except (OSError, ValueError, IndexError):
            return None

    def sample(self) -> EngineSample:
        gauges = {"ingot_model_resident_bytes": self.resident_bytes()}
        if self.footprint is not None:
            gauges["ingot_model_memory_budget_bytes"] = self.footprint.total_bytes
            gauges["ingot_model_kv_cache_budget_bytes"] = self.footprint.kv_bytes * self.footprint.ranks
        return EngineSample(self.name, self.version, self.llm.stats(),
                            {k: v for k, v in gauges.items() if v is not None})


class ModelRegistry:
    """Every served engine by name and version, their states, and the load / unload that change them."""

    def __init__(self, source, start_engine: StartEngine, budget: DeviceBudget | None = None,
                 drain_s: float = 5.0) -> None:
        self.source = source  # repository.Repository or repository.SingleEngine
        self.budget = budget  # None: each engine sizes its own KV cache (tests with fake engines)
        self._start_engine, self.drain_s = start_engine, drain_s
        self._served: dict[str, dict[str, ServedModel]] = {}  # name -> version -> model, READY ones only
        self._status: dict[str, dict[str, tuple[str, str]]] = {}  # name -> version -> (state, reason)
        self._lock = asyncio.Lock()

    @classmethod
    def holding(cls, llm, name: str, version: str = "1") -> "ModelRegistry":
        """A registry serving an engine that is already running (embedding, tests)."""
        from ingot.serve.repository import SingleEngine

        registry = cls(SingleEngine(name, getattr(llm, "engine_dir", None)), lambda *_: llm)
        registry._add([ServedModel(name, version, llm)])
        return registry

    # ---- routing ----

    def get(self, name: str, version: str | None = None) -> ServedModel:
        versions = self._served.get(name)
        if not versions:
            raise ModelError(self._why_absent(name))
        if version in (None, ""):
            return versions[max(versions, key=int)]
        if version not in versions:
            state, reason = self._status.get(name, {}).get(
                version, (UNAVAILABLE, "no such version, or not selected by the model's version_policy"))
            raise ModelError(f"model '{name}' version {version} is not served ({state}: {reason}); loaded "
                             f"versions: {', '.join(sorted(versions, key=int))}")
        return versions[version]

    def resolve(self, model: str | None) -> ServedModel:
        """The OpenAI `model` field: a name, NAME/VERSION, or None when exactly one model is served."""
        if model is None:
            names = list(self._served)
            if len(names) != 1:
                raise ModelError(f"this server serves {len(names)} models ({', '.join(names) or 'none loaded'}); "
                                 "name one in the request's model field", status=400 if names else 404)
            return self.get(names[0])
        if model in self._served or model in self._status:
            return self.get(model)
        name, _, version = model.rpartition("/")
        if version.isdigit() and name in self._status:
            return self.get(name, version)
        return self.get(model)

    def loaded(self) -> list[ServedModel]:
        """Every loaded version, by name and version (a snapshot: the watchdog thread reads it too)."""
        models = [m for versions in list(self._served.values()) for m in list(versions.values())]
        return sorted(models, key=lambda m: (m.name, int(m.version)))

    def versions(self, name: str) -> list[str]:
        return sorted(self._served.get(name, {}), key=int)

    def _why_absent(self, name: str) -> str:
        if name in self._status:
            return (f"model '{name}' is not loaded (it was unloaded, or failed to load); load it with "
                    f"POST /v2/repository/models/{name}/load")
        served = ", ".join(f"'{n}'" for n in sorted(self._served)) or "none"
        return f"unknown model '{name}': this server serves {served}"

    # ---- health, metrics, shutdown ----

    def failure(self) -> str | None:
        """Why a loaded engine can no longer serve (the server then stops), or None."""
        for model in self.loaded():
            failure = model.llm.failure()
            if failure is not None:
                return failure if len(self._status) == 1 else f"model {model.key}: {failure}"
        return None

    def samples(self) -> list[EngineSample]:
        return [model.sample() for model in self.loaded()]

    def abort_all(self) -> None:
        for model in self.loaded():
            model.llm.abort_all()

    def shutdown(self) -> None:
        _stop_engines([m.llm for m in self.loaded()])
        self._served.clear()

    # ---- the repository API ----

    def index(self, ready_only: bool = False) -> list[dict]:
        """Triton's repository index: every version known, with its state; models present in the
        repository but never loaded by name only."""
        rows = [{"name": name, "version": version, "state": state, "reason": reason}
                for name in sorted(self._status)
                for version, (state, reason) in sorted(self._status[name].items(), key=lambda kv: int(kv[0]))
                if not ready_only or state == READY]
        if not ready_only:
            rows += [{"name": name} for name in self.source.names() if name not in self._status]
        return rows

    def start(self) -> None:
        """Load every model the source names, before the server listens; any failure is the server's."""
        entries = self.source.read_all()
        wanted = [(entry, version) for entry in entries for version in entry.versions]
        footprints = self._plan(wanted)
        for entry, version in wanted:
            self._set(entry.name, version, LOADING)
        self._add(self._start_all(wanted, footprints))

    async def load(self, name: str) -> None:
        """Load (or reload) a model: read its folder again, start the versions its policy selects that are
        not running, stop the running ones it no longer selects."""
        from ingot.errors import IngotError

        async with self._lock:
            try:
                entry = self.source.read(name)
            except IngotError as exc:
                raise ModelError(str(exc), status=400) from None
            running = self._served.get(name, {})
            await self._stop([running[v] for v in running if v not in entry.versions], "not in version_policy")
            wanted = [(entry, v) for v in entry.versions if v not in running]
            try:
                footprints = self._plan(wanted)
                for _, version in wanted:
                    self._set(name, version, LOADING)
                self._add(await asyncio.to_thread(self._start_all, wanted, footprints))
            except Exception as exc:  # noqa: BLE001 - whatever stopped it, the client gets why (Triton: 400)
                for _, version in wanted:
                    self._set(name, version, UNAVAILABLE, str(exc))
                raise ModelError(f"failed to load '{name}': {exc}", status=400) from None
        logger.info("loaded %s (versions %s)", name, ", ".join(self.versions(name)))

    async def unload(self, name: str) -> None:
        async with self._lock:
            if name not in self._status and name not in self.source.names():
                raise ModelError(f"failed to unload '{name}': {self._why_absent(name)}", status=400)
            await self._stop(list(self._served.get(name, {}).values()), "unloaded")
        logger.info("unloaded %s", name)

    # ---- internals ----

    def _plan(self, wanted: list) -> dict[str, Footprint | None]:
        if self.budget is None:
            return {f"{entry.name}/{v}": None for entry, v in wanted}
        demands = [demand(f"{entry.name}/{v}", entry.versions[v], entry.kv, self.budget) for entry, v in wanted]
        held = [m.footprint for m in self.loaded() if m.footprint is not None]
        return {f.key: f for f in plan(demands, self.budget, held)}

    def _start_all(self, wanted: list, footprints: dict) -> list[ServedModel]:
        """Start the engines side by side (each loads in a process of its own); if one fails, stop the rest."""
        def start(item) -> ServedModel:
            entry, version = item
            footprint = footprints[f"{entry.name}/{version}"]
            cache = None if footprint is None else CacheConfig(
                gpu_memory_fraction=self.budget.fraction, max_cache_bytes=footprint.kv_bytes)
            llm = self._start_engine(entry.versions[version], cache, entry.draft_engine)
            return ServedModel(entry.name, version, llm, footprint)

        with ThreadPoolExecutor(max_workers=max(len(wanted), 1), thread_name_prefix="ingot-load") as pool:
            futures = [pool.submit(start, item) for item in wanted]
            done = [f.result() for f in futures if f.exception() is None]
            errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            _stop_engines([m.llm for m in done])
            raise errors[0]
        return done

    def _add(self, models: list[ServedModel]) -> None:
        for model in models:
            self._served.setdefault(model.name, {})[model.version] = model
            self._set(model.name, model.version, READY)

    async def _stop(self, models: list[ServedModel], reason: str) -> None:
        """Route nothing more to them, let open requests finish (up to drain_s), abort the rest, stop them."""
        for model in models:
            self._served[model.name].pop(model.version)
            if not self._served[model.name]:
                del self._served[model.name]
            self._set(model.name, model.version, UNLOADING)
        deadline = time.monotonic() + self.drain_s
        while any(m.llm.num_requests for m in models) and time.monotonic() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)
        for model in models:
            model.llm.abort_all()
        await asyncio.to_thread(_stop_engines, [m.llm for m in models])
        for model in models:
            self._set(model.name, model.version, UNAVAILABLE, reason)

    def _set(self, name: str, version: str, state: str, reason: str = "") -> None:
        self._status.setdefault(name, {})[version] = (state, reason)


def _stop_engines(llms: list) -> None:
    with ThreadPoolExecutor(max_workers=max(len(llms), 1)) as pool:
        list(pool.map(lambda llm: llm.shutdown(), llms))
    if any(getattr(llm, "core_pid", None) is None for llm in llms):
        _release_memory()


def _release_memory() -> None:
    """An engine on a thread of this process (--engine-in-process) leaves its memory to this process's
    allocators: free its reference cycles, then hand the freed pages back to the device and the OS."""
    import ctypes
    import sys

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc keeps freed heap pages resident otherwise
    except (OSError, AttributeError):  # not glibc: the pages stay with the allocator, for the next load
        pass
