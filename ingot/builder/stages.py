"""The build pipeline, one stage per function; each maps a stream of (engine name, tensor) on.

    read ─▶ convert ─▶ check_and_cast ─▶ quantize ─▶ shard ─▶ write
    HF names   engine names,    the model's      scheme:        one dict      rank{i}.safetensors
    (or dummy) q/k/v and        names, shapes;   stored         per rank
               gate/up fused    cast to dtype    tensors

A quantization method is a new `QuantScheme.quantize`; a parallel layout is what `shard` cuts,
read from the models of the ranks themselves (each parameter knows how it is sliced: see
ingot/layers/linear.py), so no stage holds a second description of the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file

from ingot.config import ModelConfig
from ingot.engine_format import rank_file
from ingot.errors import CheckpointError, EngineError
from ingot.models import model_module

Tensors = Iterator[tuple[str, torch.Tensor]]
Layout = dict[str, tuple[tuple[int, ...], torch.dtype]]  # engine name -> (shape, dtype)


def convert(cfg: ModelConfig, hf_tensors: Tensors, source: str) -> Tensors:
    """Hugging Face names -> engine names, fusing what the runtime layout fuses (the model family's rule)."""
    try:
        yield from model_module(cfg.architecture).convert_hf_weights(cfg, hf_tensors)
    except KeyError as exc:
        raise CheckpointError(f"{source}: {exc.args[0]}") from exc


def check_and_cast(tensors: Tensors, layout: Layout, source: str, architecture: str) -> Tensors:
    """Every tensor must be one the model has, with its shape; floating tensors are cast to the
    model's dtype. When the stream ends, every parameter must have arrived."""
    seen = set()
    for name, tensor in tensors:
        if name not in layout:
            raise CheckpointError(f"{source}: unexpected weight {name!r} for {architecture}")
        shape, dtype = layout[name]
        if tuple(tensor.shape) != shape:
            raise CheckpointError(f"{source}: weight {name!r} has shape {tuple(tensor.shape)}, "
                                  f"the config implies {shape}")
        seen.add(name)
        yield name, tensor.to(dtype).contiguous()
    missing = sorted(set(layout) - seen)
    if missing:
        raise CheckpointError(f"{source}: missing weights {missing[:5]}{' and more' if len(missing) > 5 else ''}")


def shard(tensors: Tensors, rank_models: list[torch.nn.Module]) -> list[dict[str, torch.Tensor]]:
    """Each rank's slice of every tensor it holds (a pipeline stage holds only its layers)."""
    wanted = [_rank_params(model) for model in rank_models]
    sources = [model.weight_sources() if hasattr(model, "weight_sources") else {} for model in rank_models]
    shards: list[dict[str, torch.Tensor]] = [{} for _ in rank_models]
    for name, tensor in tensors:
        for rank, model in enumerate(rank_models):
            targets = [name] + [alias for alias, source in sources[rank].items() if source == name]
            for target in targets:
                if target in wanted[rank]:
                    shards[rank][target] = _slice_for(model, target, tensor, wanted[rank][target], rank)
    for rank, shard_tensors in enumerate(shards):
        missing = sorted(set(wanted[rank]) - set(shard_tensors))
        if missing:
            raise EngineError(f"rank {rank}: no tensor for parameters {missing[:5]}")
    return shards


def _rank_params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.state_dict(keep_vars=True))


def _slice_for(model: torch.nn.Module, name: str, full: torch.Tensor, param: torch.Tensor, rank: int) -> torch.Tensor:
    module_path, _, param_name = name.rpartition(".")
    module = model.get_submodule(module_path)
    part = module.shard(param_name, full) if hasattr(module, "shard") else full.contiguous()
    if tuple(part.shape) != tuple(param.shape) or part.dtype != param.dtype:
        raise EngineError(f"rank {rank}: the slice of {name!r} is {part.dtype} {tuple(part.shape)}, "
                          f"the rank's model expects {param.dtype} {tuple(param.shape)}")
    return part


def write(directory: Path, shards: list[dict[str, torch.Tensor]]) -> list[str]:
    """One safetensors file per rank; returns their names."""
    names = []
    for rank, tensors in enumerate(shards):
        names.append(rank_file(rank))
        save_file(tensors, str(directory / names[-1]), metadata={"format": "pt"})
    return names
