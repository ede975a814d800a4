"""Build an engine: checkpoint -> fused, cast weights + engine.json, written atomically.

The engine is assembled in a hidden temporary directory beside the target and renamed into
place only when complete, so a failed or interrupted build never leaves a directory that
looks like an engine.
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

import torch
from safetensors.torch import save_file

from ingot.builder.checkpoint import load_checkpoint
from ingot.builder.dummy import dummy_tensors, read_config_json
from ingot.builder.tuning import tune_tactics
from ingot.builder.engine_format import (ENGINE_JSON, EngineSpec, current_device, software_versions,
                                         write_spec)
from ingot.config import BuildConfig, ModelConfig
from ingot.errors import CheckpointError, ConfigError, EngineError
from ingot.models import check_architecture, model_class, model_module

LOAD_FORMATS = ("auto", "dummy")
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_dtype(requested: str, checkpoint_dtype: str, device_kind: str) -> str:
    """auto: bf16 on CUDA (fp16 if the checkpoint is fp16), fp32 on CPU where bf16 matmuls are slow."""
    if requested != "auto":
        return requested
    if device_kind == "cpu":
        return "fp32"
    return "fp16" if checkpoint_dtype == "fp16" else "bf16"


def build_engine(model: str, output_dir: str | Path, build_config: BuildConfig | None = None,
                 device: str | None = None, load_format: str = "auto") -> EngineSpec:
    """Build MODEL (checkpoint folder, .gguf file or preset name; with load_format="dummy", a
    config.json whose shapes get random weights) into output_dir."""
    started = time.perf_counter()
    build_config = build_config or BuildConfig()
    output_dir = Path(output_dir)
    _check_output_dir(output_dir)
    if load_format not in LOAD_FORMATS:
        raise ConfigError(f"load_format={load_format!r} is unknown; use one of {', '.join(LOAD_FORMATS)}")
    checkpoint = None if load_format == "dummy" else load_checkpoint(model)
    hf_config = read_config_json(model) if checkpoint is None else checkpoint.hf_config
    model_config = model_config_of(hf_config, str(model))
    build_config = build_config.resolved(model_config)
    target = current_device(device)
    dtype = resolve_dtype(build_config.dtype, model_config.checkpoint_dtype, target.kind)
    staging = output_dir.parent / f".{output_dir.name}.building-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        torch_dtype = TORCH_DTYPES[dtype]
        if checkpoint is None:
            tensors = dummy_tensors(expected_shapes(model_config), torch_dtype, _generator_device(target))
        else:
            tensors = model_module(model_config.architecture).convert_hf_weights(model_config, checkpoint.tensors())
        _write_weights(staging, tensors, model_config, torch_dtype, str(model))
        for name, content in (checkpoint.tokenizer_files.items() if checkpoint else ()):
            (staging / name).write_bytes(content)
        tactics, tactic_timings = tune_tactics(model_config, build_config, torch_dtype, target)
        spec = EngineSpec(model=model_config, build=build_config, dtype=dtype, target=target,
                          versions=software_versions(), source=str(model), load_format=load_format,
                          tactics=tactics, tactic_timings=tactic_timings,
                          build_seconds=time.perf_counter() - started)
        write_spec(staging, spec)  # last: engine.json marks a complete engine
        _move_into_place(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return spec


def _generator_device(target) -> str:
    return "cuda" if target.kind == "cuda" else "cpu"


def model_config_of(hf_config: dict, source: str) -> ModelConfig:
    archs = hf_config.get("architectures") or ["<none>"]
    check_architecture(archs[0])
    try:
        return ModelConfig.from_hf(hf_config)
    except KeyError as exc:
        raise CheckpointError(f"{source}: config.json lacks the field {exc}") from exc


def _check_output_dir(output_dir: Path) -> None:
    """Replace an earlier engine, but never clobber a directory that holds something else."""
    if output_dir.exists() and not (output_dir / ENGINE_JSON).is_file() and any(output_dir.iterdir()):
        raise EngineError(f"output directory {output_dir} exists and is not an engine; "
                          "choose another -o or empty it")


def _write_weights(staging: Path, tensors, cfg: ModelConfig, dtype: torch.dtype, source: str) -> None:
    expected = expected_shapes(cfg)
    weights: dict[str, torch.Tensor] = {}
    try:
        for name, tensor in tensors:
            if name not in expected:
                raise CheckpointError(f"{source}: unexpected weight {name!r} for {cfg.architecture}")
            if tuple(tensor.shape) != expected[name]:
                raise CheckpointError(f"{source}: weight {name!r} has shape {tuple(tensor.shape)}, "
                                      f"the config implies {expected[name]}")
            weights[name] = tensor.to(dtype).contiguous()
    except KeyError as exc:
        raise CheckpointError(f"{source}: {exc.args[0]}") from exc
    missing = sorted(set(expected) - set(weights))
    if missing:
        raise CheckpointError(f"{source}: missing weights {missing[:5]}"
                              f"{' and more' if len(missing) > 5 else ''}")
    save_file(weights, str(staging / "rank0.safetensors"), metadata={"format": "pt"})


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every weight the runtime model has, by engine name, with its shape (built on 'meta': no memory)."""
    from ingot.attention import get_backend

    with torch.device("meta"):
        model = model_class(cfg.architecture)(cfg, get_backend("torch"), max_positions=1)
    return {name: tuple(p.shape) for name, p in model.state_dict().items()}


def _move_into_place(staging: Path, output_dir: Path) -> None:
    if output_dir.exists():
        retired = output_dir.parent / f".{output_dir.name}.old-{uuid.uuid4().hex[:8]}"
        output_dir.rename(retired)
        staging.rename(output_dir)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staging.rename(output_dir)
