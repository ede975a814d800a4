"""The one device-memory budget every served model shares, split explicitly before any engine starts.

    usable = --gpu-memory-fraction x the device's memory (a GPU's, or the host's RAM on CPU)
    each model version charges: weights + activation reserve (+ a CUDA context) + its KV cache
    sum of the charges of every loaded version <= usable, else the load is refused naming the figures

A version's KV cache is its kv_cache_bytes, or kv_cache_fraction x the device's memory, or (neither
given) an equal share of what the others leave; never more than its envelope can use (every
sequence of max_batch_size at max_seq_len), never less than one sequence of max_seq_len. The figure
reaches its engine as CacheConfig.max_cache_bytes, so the engine's own sizing (kv_sizing.py, which
also sees what other processes hold on the GPU) can only lower it.

Figures are per rank on a GPU (each rank has a GPU of its own; the largest rank is counted) and
summed over ranks on CPU (all ranks share the host's RAM).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ingot.errors import ConfigError, EngineError
from ingot.serve.repository import KVRequest

CUDA_CONTEXT_BYTES = 512 << 20  # each engine core process holds a CUDA context of its own (an estimate)
DEFAULT_CPU_KV_BYTES = 1 << 30  # the engine's own CPU default (kv_sizing.DEFAULT_CPU_CACHE_BYTES)
KV_FLAGS = ("kv_cache_fraction / kv_cache_bytes (in DIR/NAME/model_config.json, or --kv-cache-fraction / "
            "--kv-cache-bytes)")
FIX = f"lower {KV_FLAGS}, serve fewer versions, or raise --gpu-memory-fraction"


@dataclass(frozen=True)
class DeviceBudget:
    kind: str  # "cuda" | "cpu"
    total_bytes: int  # one GPU's memory, or the host's RAM
    fraction: float  # --gpu-memory-fraction: the server's share of it

    @classmethod
    def detect(cls, device: str | None, fraction: float) -> "DeviceBudget":
        from ingot.deploy.machine import detect_machine

        if not 0 < fraction <= 1:
            raise ConfigError(f"--gpu-memory-fraction {fraction} must be in (0, 1]")
        machine = detect_machine(device)
        return cls(machine.kind, machine.memory_bytes, fraction)

    @property
    def usable(self) -> int:
        return int(self.fraction * self.total_bytes)

    def describe(self) -> str:
        what = "the GPU's" if self.kind == "cuda" else "the host's RAM"
        return f"{size(self.usable)} ({self.fraction:g} x {size(self.total_bytes)}, {what}; --gpu-memory-fraction)"


@dataclass(frozen=True)
class Demand:
    """A version about to load: what it needs whatever its KV cache gets, and its KV limits (per rank)."""

    key: str  # "NAME/VERSION"
    fixed_bytes: int  # weights + activation reserve (+ CUDA context), over the ranks that share the budget
    ranks: int  # ranks whose KV caches land on the budget: all of them on CPU, one on a GPU
    kv_min: int  # one sequence of max_seq_len
    kv_max: int  # every sequence of the envelope at max_seq_len: more is never used
    kv: KVRequest


@dataclass(frozen=True)
class Footprint:
    """What one loaded version takes from the budget."""

    key: str
    fixed_bytes: int
    kv_bytes: int  # per rank: the engine's CacheConfig.max_cache_bytes
    ranks: int

    @property
    def total_bytes(self) -> int:
        return self.fixed_bytes + self.kv_bytes * self.ranks

    def describe(self) -> str:
        return f"{self.key} {size(self.fixed_bytes)} + KV {size(self.kv_bytes * self.ranks)}"


def demand(key: str, engine_dir: Path, kv: KVRequest, budget: DeviceBudget) -> Demand:
    """Read the engine's spec and weight files for what it will take."""
    from ingot.engine_format import rank_file, read_spec
    from ingot.kv_size import kv_bytes_per_block
    from ingot.parallel.mapping import kv_heads_per_rank
    from ingot.runtime.kv_cache import blocks_needed
    from ingot.runtime.kv_sizing import activation_reserve

    spec = read_spec(engine_dir)
    cfg, build = spec.model, spec.build
    per_block = max(kv_bytes_per_block(len(r.layer_ids), kv_heads_per_rank(cfg.num_kv_heads, r.tp_size),
                                       cfg.head_dim, spec.kv_element_bytes, build.tokens_per_block)
                    for r in spec.mapping.ranks)
    try:
        weights = [(engine_dir / rank_file(r.rank)).stat().st_size for r in spec.mapping.ranks]
    except OSError as exc:
        raise EngineError(f"{engine_dir}: a weight file is missing ({exc}); rebuild the engine") from None
    per_seq = blocks_needed(build.max_seq_len, build.tokens_per_block)
    if budget.kind == "cuda":
        ranks, fixed = 1, max(weights) + activation_reserve(spec) + CUDA_CONTEXT_BYTES
    else:
        ranks, fixed = spec.world_size, sum(weights) + spec.world_size * activation_reserve(spec)
    return Demand(key, fixed, ranks, (per_seq + 1) * per_block, (build.max_batch_size * per_seq + 1) * per_block, kv)


def plan(demands: list[Demand], budget: DeviceBudget, held: list[Footprint]) -> list[Footprint]:
    """Each demand's footprint, the versions already loaded (held) left as they are; ConfigError naming
    the figures when they do not fit together."""
    free = budget.usable - sum(f.total_bytes for f in held)
    asked = {d.key: _asked(d, budget) for d in demands}
    unasked = [d for d in demands if asked[d.key] is None]
    if unasked:  # an equal share of what the others leave
        left = free - sum(d.fixed_bytes + min(asked[d.key] or 0, d.kv_max) * d.ranks for d in demands)
        for d in unasked:
            share = max(left // len(unasked) // d.ranks, 0)
            asked[d.key] = min(share, DEFAULT_CPU_KV_BYTES) if budget.kind == "cpu" else share
    footprints = []
    for d in demands:
        kv = min(asked[d.key], d.kv_max)
        if kv < d.kv_min:
            raise ConfigError(f"{d.key}: its KV cache would get {size(kv)} ({d.kv.describe()}), less than the "
                              f"{size(d.kv_min)} one sequence of its max_seq_len needs; raise its {KV_FLAGS}, or "
                              "leave it more memory (lower the others', serve fewer versions, or raise "
                              "--gpu-memory-fraction)")
        footprints.append(Footprint(d.key, d.fixed_bytes, kv, d.ranks))
    need = sum(f.total_bytes for f in footprints)
    if need > free:
        loaded = f" after {size(budget.usable - free)} held by {len(held)} loaded versions" if held else ""
        raise ConfigError(f"the models need {size(need)} ({', '.join(f.describe() for f in footprints)}) but "
                          f"{size(free)} is free of the server's {budget.describe()}{loaded}; {FIX}")
    return footprints


def _asked(d: Demand, budget: DeviceBudget) -> int | None:
    if d.kv.bytes is not None:
        return d.kv.bytes
    return None if d.kv.fraction is None else int(d.kv.fraction * budget.total_bytes)


def size(n: int) -> str:
    if abs(n) >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.1f} MiB" if abs(n) >= 2**20 else f"{n / 2**10:.1f} KiB"
