"""make_plan: every sensible layout, which fit, the recommendation and its build command
(command.py: only flags `ingot build` has, with notes where it builds less than the plan).

The one calculator behind `ingot plan`, its --json output and the web page's /api/plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingot.errors import ConfigError
from ingot.plan import memory as mem
from ingot.plan import perf
from ingot.plan.command import BuildCommand, build_command
from ingot.plan.gpus import GPU, resolve_gpu
from ingot.plan.memory import Envelope, Layout, Memory, memory_per_gpu, total_weight_bytes
from ingot.plan.perf import Perf, estimate
from ingot.plan.precisions import Execution, Precision, execution_on, resolve_kv_dtype, resolve_precision
from ingot.plan.presets import resolve_model
from ingot.plan.shapes import ModelShape

# GPU counts tried when --num-gpus is not given: one card, one HGX box, then whole boxes.
CANDIDATE_GPU_COUNTS = (1, 2, 4, 8, 16, 32)
# Past 8 ranks TP's two all-reduces per layer cost more than the split saves for every model
# here, so larger layouts add PP stages. (Attention-DP with wide EP, as DeepSeek deployments
# use on NVL72, is not modelled.)
MAX_TP = 8
DEFAULT_ISL, DEFAULT_OSL, DEFAULT_CONCURRENCY = 2048, 512, 64
MAX_LENGTH = 10_000_000  # a typo guard: no model here attends over more than ~1M tokens


@dataclass(frozen=True)
class Row:
    layout: Layout
    memory: Memory
    perf: Perf | None  # None when the weights alone don't fit

    @property
    def status(self) -> str:
        if self.memory.fits:
            return "fits"
        if self.memory.fits_weights and self.memory.max_concurrency > 0:
            return f"KV-limited: {self.memory.max_concurrency} concurrent"
        return "no"

    def to_dict(self) -> dict[str, Any]:
        m = self.memory
        gb = {k: round(getattr(m, k) / 1e9, 2) for k in
              ("capacity", "weights", "kv_envelope", "activations", "overhead", "kv_pool")}
        return {"layout": self.layout.name, "tp": self.layout.tp, "pp": self.layout.pp, "ep": self.layout.ep,
                "num_gpus": self.layout.num_gpus, "fits": m.fits, "fits_weights": m.fits_weights,
                "status": self.status, "memory_gb": gb, "kv_bytes_per_token": m.kv_bytes_per_token,
                "kv_tokens": m.kv_tokens, "max_concurrency": m.max_concurrency,
                "perf": self.perf.to_dict() if self.perf else None}


def _positive(name: str, value: Any, limit: int = MAX_LENGTH) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= limit:
        raise ConfigError(f"{name} must be a positive integer (1..{limit:,}), got {value!r}")
    return value


def sensible_layouts(shape: ModelShape, gpu: GPU, num_gpus: int) -> list[Layout]:
    """TP x PP (x EP for MoE) = num_gpus, with TP <= MAX_TP inside one NVLink domain (or PCIe
    box), TP dividing the attention heads, KV heads dividing TP or TP them, PP <= layers."""
    layouts = []
    for tp in (d for d in range(1, num_gpus + 1) if num_gpus % d == 0):
        pp = num_gpus // tp
        kv_ok = shape.is_mla or shape.num_kv_heads % tp == 0 or tp % shape.num_kv_heads == 0
        if tp > min(MAX_TP, gpu.nvlink_domain) or shape.num_heads % tp or not kv_ok or pp > shape.num_layers:
            continue
        layouts.append(Layout(tp, pp))
        if shape.is_moe and tp > 1 and shape.num_experts % tp == 0:
            layouts.append(Layout(tp, pp, ep=tp))
    return layouts


def _evaluate(shape: ModelShape, precision: Precision, execution: Execution, gpu: GPU,
              layout: Layout, env: Envelope) -> Row:
    memory = memory_per_gpu(shape, precision, execution.kv_dtype, layout, env, gpu.memory_bytes)
    result = (estimate(shape, precision, execution, gpu, layout, env, memory.max_concurrency)
              if memory.fits_weights and memory.max_concurrency > 0 else None)
    return Row(layout, memory, result)


def _rows(shape, precision, execution, gpu, env, num_gpus: int | None) -> list[Row]:
    """All layouts of the given count, or of each candidate count up to the first that fits."""
    rows: list[Row] = []
    for count in ([num_gpus] if num_gpus else CANDIDATE_GPU_COUNTS):
        layouts = sensible_layouts(shape, gpu, count)
        if num_gpus and not layouts:
            raise ConfigError(f"--num-gpus {count}: no TP x PP split of {count} GPUs suits {shape.name} "
                              f"({shape.num_heads} heads, {shape.num_kv_heads} KV heads, TP <= "
                              f"{min(MAX_TP, gpu.nvlink_domain)}); try a power of two")
        rows += [_evaluate(shape, precision, execution, gpu, layout, env) for layout in layouts]
        if any(row.memory.fits for row in rows):
            break
    return rows


def _speed(row: Row) -> tuple[float, float]:
    return (row.perf.output_tok_s if row.perf else 0.0, -row.layout.pp)


def _recommend(shape: ModelShape, gpu: GPU, env: Envelope, rows: list[Row],
               weights_gb: float) -> tuple[Row | None, str]:
    """The fastest layout among the fewest GPUs that fit; else the one with most KV room; else none."""
    fitting = [r for r in rows if r.memory.fits]
    if fitting:
        fewest = min(r.layout.num_gpus for r in fitting)
        peers = sorted((r for r in fitting if r.layout.num_gpus == fewest), key=_speed, reverse=True)
        return peers[0], _fit_reason(shape, gpu, env, peers, weights_gb)
    limited = [r for r in rows if r.perf]
    if limited:
        best = max(limited, key=lambda r: (r.memory.max_concurrency, _speed(r)))
        return best, (f"no layout tried holds KV for {env.concurrency} x {env.seq_len:,} tokens; "
                      f"{best.layout.name} holds the weights and KV for {best.memory.max_concurrency} "
                      "concurrent requests: lower --batch/--concurrency, shorten ISL/OSL, use "
                      "--kv-cache-dtype fp8, or add GPUs")
    need = min(r.memory.weights for r in rows) / 1e9 if rows else 0.0
    most = max((r.layout.num_gpus for r in rows), default=0)
    return None, (f"does not fit on up to {most} x {gpu.name}: the weights alone need {need:.1f} GB per GPU "
                  f"in the best split, more than {gpu.memory_bytes / 1e9:.1f} GB less overhead; use a "
                  "smaller precision (fp8 halves the weights, int4/nvfp4 quarters them) or more GPUs")


def _fit_reason(shape: ModelShape, gpu: GPU, env: Envelope, peers: list[Row], weights_gb: float) -> str:
    best = peers[0]
    n = best.layout.num_gpus
    reason = (f"{n} x {gpu.name} is the fewest that hold {weights_gb:.1f} GB of weights "
              f"plus KV for {env.concurrency} x {env.seq_len:,} tokens; {best.layout.name} is the fastest split")
    # Compare with the best other TP x PP split (an EP variant of the same split is no alternative).
    other = next((r for r in peers if (r.layout.tp, r.layout.pp) != (best.layout.tp, best.layout.pp)), None)
    if other and best.perf and other.perf:
        gain = best.perf.output_tok_s / max(other.perf.output_tok_s, 1e-9)
        reason += f" ({gain:.2f}x the throughput of {other.layout.name})"
    if best.layout.tp > 1 and best.layout.pp == 1:
        reason += "; TP divides the bytes every decode step reads, PP only divides memory"
    elif best.layout.pp > 1:
        reason += (f"; PP{best.layout.pp} because a wider TP is not possible (heads, at most "
                   f"{min(MAX_TP, gpu.nvlink_domain)} TP ranks) or its all-reduces over {gpu.link.upper()} "
                   "cost more than they save")
    if best.layout.ep > 1:
        reason += (f"; EP keeps each {shape.moe_intermediate_size}-wide expert whole instead of "
                   f"slicing it {best.layout.tp} ways into thin GEMMs")
    return reason


def make_plan(model: str | ModelShape, gpu: str, precision: str | None = None, kv_cache_dtype: str | None = None,
              isl: int = DEFAULT_ISL, osl: int = DEFAULT_OSL, concurrency: int = DEFAULT_CONCURRENCY,
              num_gpus: int | None = None, search_dirs: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The whole plan as a JSON-ready dict. Raises ConfigError naming the bad input and the choices.
    model is what --model takes, or a ModelShape read already (`ingot serve` reads a .gguf or preset)."""
    card = resolve_gpu(gpu)
    shape, engine_build = (model, {}) if isinstance(model, ModelShape) else resolve_model(model, search_dirs)
    prec = resolve_precision(precision or engine_build.get("quant") or _engine_dtype(engine_build))
    env = Envelope(_positive("--isl", isl), _positive("--osl", osl), _positive("--batch/--concurrency", concurrency))
    if num_gpus is not None:
        _positive("--num-gpus", num_gpus, limit=1024)
    execution = execution_on(prec, resolve_kv_dtype(kv_cache_dtype, prec), card)
    rows = _rows(shape, prec, execution, card, env, num_gpus)
    weights_gb = total_weight_bytes(shape, prec) / 1e9
    best, reason = _recommend(shape, card, env, rows, weights_gb)
    command = build_command(shape, prec, execution.kv_dtype, best.layout, env, card) if best else None
    return {
        "model": _model_dict(shape, execution),
        "gpu": card.to_dict(),
        "precision": {"name": prec.name, "about": prec.about, "weight_bytes": prec.weight_bytes,
                      "compute": prec.compute, "runs_as": execution.compute, "native": execution.native,
                      "kv_cache_dtype": execution.kv_dtype, "notes": list(execution.notes)},
        "envelope": {"isl": env.isl, "osl": env.osl, "concurrency": env.concurrency,
                     "seq_len": env.seq_len, "max_num_tokens": env.max_num_tokens},
        "weights_gb": round(weights_gb, 2),
        "fits": any(r.memory.fits for r in rows),
        "layouts": [r.to_dict() for r in rows],
        "recommendation": {"layout": best.to_dict() if best else None, "reason": reason,
                           **_command_dict(command)},
        "warnings": _warnings(shape, env),
        "assumptions": _assumptions(),
    }


def _engine_dtype(build: dict[str, Any]) -> str:
    dtype = build.get("dtype")
    return dtype if dtype in ("bf16", "fp16") else "bf16"


def _command_dict(command: BuildCommand | None) -> dict[str, Any]:
    """build_command is None when nothing fits, or when `ingot build` cannot build the layout yet
    (build_notes then say why)."""
    if command is None:
        return {"build_command": None, "build_notes": []}
    return {"build_command": command.command, "build_notes": list(command.notes)}


def _model_dict(shape: ModelShape, execution: Execution) -> dict[str, Any]:
    return {"name": shape.name, "architecture": shape.architecture, "hf_id": shape.hf_id,
            "checkpoint_path": shape.checkpoint_path,
            "params_b": round(shape.num_params / 1e9, 2), "active_params_b": round(shape.active_params / 1e9, 2),
            "layers": shape.num_layers, "hidden": shape.hidden_size, "heads": shape.num_heads,
            "kv_heads": shape.num_kv_heads, "moe": shape.is_moe, "mla": shape.is_mla,
            "experts": shape.num_experts, "experts_per_token": shape.experts_per_token,
            "kv_bytes_per_token": shape.kv_bytes_per_token(mem.kv_dtype_bytes(execution.kv_dtype)),
            "max_position_embeddings": shape.max_position_embeddings}


def _warnings(shape: ModelShape, env: Envelope) -> list[str]:
    out = []
    if env.seq_len > shape.max_position_embeddings:
        out.append(f"ISL + OSL = {env.seq_len:,} exceeds the model's context of "
                   f"{shape.max_position_embeddings:,} tokens")
    return out


def _assumptions() -> dict[str, float]:
    names = ("DECODE_BW_EFFICIENCY", "MATMUL_EFFICIENCY", "LINK_EFFICIENCY", "NVLINK_LATENCY_S",
             "PCIE_LATENCY_S", "STEP_OVERHEAD_S", "EP_IMBALANCE", "MIN_EFFICIENT_GEMM_N")
    values = {n.lower(): getattr(perf, n) for n in names}
    values.update(kv_memory_fraction=mem.KV_MEMORY_FRACTION,
                  runtime_overhead_gib=mem.RUNTIME_OVERHEAD_BYTES / 2**30,
                  nccl_overhead_gib=mem.NCCL_OVERHEAD_BYTES / 2**30)
    return values
