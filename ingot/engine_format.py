"""The engine directory and its engine.json: what the builder writes and the runtime reads.

    engines/NAME/
        engine.json           written last: its presence means the build completed
        rank0.safetensors     rank 0's weights in the runtime layout (fused, cast, quantized, sliced)
        rank1.safetensors     ... one file per rank of the parallel mapping
        tokenizer.json, tokenizer_config.json, ...

engine.json records what was frozen at build time: format version, model config, build config,
the resolved dtype, the quantization (method, its parameters, the KV cache dtype), the parallel
mapping (tp, pp, ep and which layers each rank owns), the target device, the chosen GEMM tactics
and the software versions. This module sits outside the builder so the runtime reads engines
without importing any build code.

Format versions: 1 (single rank, no quantization record); 2 (this one: parallel mapping with
per-rank files, quantization record). An engine of another version is refused with a message
to rebuild it.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingot.config import (DTYPES, KV_ELEMENT_BYTES, BuildConfig, ModelConfig, QuantConfig, SpeculativeConfig,
                          kv_cache_element)
from ingot.errors import EngineError
from ingot.parallel.mapping import ParallelMapping

FORMAT_VERSION = 2
ENGINE_JSON = "engine.json"
DTYPE_NAMES = ("fp32", "fp16", "bf16")


def torch_dtype(name: str):
    """'bf16' -> torch.bfloat16 (the engine's resolved dtype); 'fp8' -> torch.float8_e4m3fn (a KV cache's)."""
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp8": torch.float8_e4m3fn}[name]


def rank_file(rank: int) -> str:
    return f"rank{rank}.safetensors"


@dataclass(frozen=True)
class TargetDevice:
    """cpu, or a CUDA device by name and compute capability ("9.0" for Hopper)."""

    kind: str  # "cpu" | "cuda"
    name: str = "cpu"
    capability: str | None = None

    def describe(self) -> str:
        if self.kind == "cpu":
            return "cpu"
        return f"cuda {self.name} (compute capability {self.capability})"

    def compatible_with(self, other: "TargetDevice") -> bool:
        """Same device kind and, for CUDA, the same architecture (an H100 engine runs on an H200)."""
        return self.kind == other.kind and self.capability == other.capability


def current_device(device: str | None = None) -> TargetDevice:
    import torch

    kind = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind.startswith("cuda"):
        index = torch.device(kind).index or 0
        major, minor = torch.cuda.get_device_capability(index)
        return TargetDevice("cuda", torch.cuda.get_device_name(index), f"{major}.{minor}")
    if kind != "cpu":
        raise EngineError(f"device={device!r} is not supported; use 'cpu' or 'cuda[:N]'")
    return TargetDevice("cpu")


@dataclass(frozen=True)
class EngineSpec:
    model: ModelConfig
    build: BuildConfig
    dtype: str  # resolved: fp32 | fp16 | bf16
    target: TargetDevice
    mapping: ParallelMapping
    quant: QuantConfig = field(default_factory=QuantConfig)
    speculative: SpeculativeConfig = field(default_factory=SpeculativeConfig)
    versions: dict[str, str] = field(default_factory=dict)
    source: str = ""
    load_format: str = "auto"  # "dummy": random weights at the model's shapes, no tokenizer unless --tokenizer
    tokenizer_source: str = ""  # the --tokenizer path of a dummy build; "" when it came with `source` (or is absent)
    tactics: dict[str, dict[str, str]] = field(default_factory=dict)  # gemm -> {token bucket: tactic}
    tactic_timings: dict = field(default_factory=dict)  # gemm -> {bucket: {tactic: microseconds}}
    build_seconds: float = 0.0
    checksums: dict = field(default_factory=dict)  # rank file -> ingot.integrity.file_checksum
    # --dummy-weights at_load: no weight files; the loader generates random weights from this seed
    dummy_seed: int | None = None
    format_version: int = FORMAT_VERSION

    @property
    def world_size(self) -> int:
        return self.mapping.world_size

    @property
    def kv_dtype(self) -> str:
        """What the KV cache stores: "fp8" (E4M3, --kv-cache-dtype fp8) or the engine's dtype."""
        return kv_cache_element(self.quant.kv_cache_dtype, self.dtype)

    @property
    def kv_element_bytes(self) -> int:
        return KV_ELEMENT_BYTES[self.kv_dtype]

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "model": self.model.to_dict(),
            "build": self.build.to_dict(),
            "dtype": self.dtype,
            "target": {"kind": self.target.kind, "name": self.target.name,
                       "capability": self.target.capability},
            "quantization": self.quant.to_dict(),
            "speculative": self.speculative.to_dict(),
            "parallel": self.mapping.to_dict(),
            "weights": [] if self.dummy_seed is not None else [rank_file(r.rank) for r in self.mapping.ranks],
            "dummy_seed": self.dummy_seed,
            "versions": self.versions,
            "source": self.source,
            "load_format": self.load_format,
            "tokenizer_source": self.tokenizer_source,
            "tactics": self.tactics,
            "tactic_timings": self.tactic_timings,
            "build_seconds": round(self.build_seconds, 3),
            "checksums": self.checksums,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "EngineSpec":
        return cls(
            model=ModelConfig.from_dict(data["model"]),
            build=BuildConfig.from_dict(data["build"]),
            dtype=data["dtype"],
            target=TargetDevice(**data["target"]),
            mapping=ParallelMapping.from_dict(data["parallel"]),
            quant=QuantConfig.from_dict(data["quantization"]),
            speculative=SpeculativeConfig.from_dict(data.get("speculative")),
            versions=data.get("versions", {}),
            source=data.get("source", ""),
            load_format=data.get("load_format", "auto"),
            tokenizer_source=data.get("tokenizer_source", ""),
            tactics=data.get("tactics", {}),
            tactic_timings=data.get("tactic_timings", {}),
            build_seconds=data.get("build_seconds", 0.0),
            checksums=data.get("checksums", {}),
            dummy_seed=data.get("dummy_seed"),
            format_version=data["format_version"],
        )


def software_versions() -> dict[str, str]:
    import safetensors
    import torch

    import ingot

    return {"ingot": ingot.__version__, "torch": torch.__version__, "safetensors": safetensors.__version__,
            "python": platform.python_version()}


def write_spec(directory: Path, spec: EngineSpec) -> None:
    (directory / ENGINE_JSON).write_text(json.dumps(spec.to_json(), indent=2) + "\n")


def read_spec(directory: str | Path) -> EngineSpec:
    """Read and check engine.json; the message says what is wrong and how to rebuild."""
    directory = Path(directory)
    path = directory / ENGINE_JSON
    if not directory.is_dir():
        raise EngineError(f"engine directory {directory} does not exist; build one with `ingot build MODEL -o {directory}`")
    if not path.is_file():
        raise EngineError(f"{directory} is not an engine: it has no {ENGINE_JSON} (an unfinished build never "
                          f"writes one); rebuild with `ingot build MODEL -o {directory}`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        version = data["format_version"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise EngineError(f"{path} is corrupt ({exc}); rebuild the engine") from exc
    if version != FORMAT_VERSION:
        raise EngineError(f"{directory} has engine format version {version}, this ingot reads version "
                          f"{FORMAT_VERSION}; rebuild it with this ingot (`ingot build`)")
    try:
        spec = EngineSpec.from_json(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise EngineError(f"{path} is corrupt ({type(exc).__name__}: {exc}); rebuild the engine") from exc
    if spec.dtype not in DTYPES:
        raise EngineError(f"{path} is corrupt (dtype {spec.dtype!r} is none of {', '.join(DTYPES)}); rebuild the engine")
    return spec


def check_target(spec: EngineSpec, here: TargetDevice, directory: Path | str = "") -> None:
    if not spec.target.compatible_with(here):
        raise EngineError(
            f"engine {directory} was built for {spec.target.describe()}, but this machine runs it on "
            f"{here.describe()}; rebuild it here with `ingot build {spec.source or 'MODEL'} -o DIR`"
        )
