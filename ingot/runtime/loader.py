"""Load a built engine: read engine.json, check the device, mmap one rank's weights and copy them in.

Loading builds nothing: the model is created on the meta device (no memory, no random init) in
the engine's dtype, for this rank's slice and the engine's quantization scheme, given
uninitialised storage on the target device, and filled from the rank's safetensors file. Every
stored tensor must have exactly the dtype and shape its parameter expects: a mismatch means the
file does not belong to this engine.json, and is an error naming the tensor, never a silent cast.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ingot.attention import AttentionBackend
from ingot.engine_format import EngineSpec, check_target, current_device, rank_file, read_spec
from ingot.errors import EngineError
from ingot.models import create_model

logger = logging.getLogger("ingot")


def load_engine(directory: str | Path, backend: AttentionBackend, device: str | torch.device | None = None,
                rank: int = 0) -> tuple[EngineSpec, torch.nn.Module, torch.device]:
    """Rank `rank`'s slice of the engine (a multi-rank engine needs its process group joined first:
    ingot/parallel/launch.py)."""
    from ingot.parallel.state import current

    directory = Path(directory)
    spec = read_spec(directory)
    here = current_device(str(device) if device is not None else None)
    check_target(spec, here, directory)
    state = current()
    if spec.world_size > 1 and (state is None or state.world_size != spec.world_size or state.rank != rank):
        raise EngineError(
            f"engine {directory} is split over {spec.world_size} ranks (tp={spec.mapping.config.tp}, "
            f"pp={spec.mapping.config.pp}); load it through LLM / LLMEngine, which start one process per rank")
    torch_device = torch.device(device or ("cuda" if here.kind == "cuda" else "cpu"))
    model = create_model(spec, backend, rank).to_empty(device=torch_device)
    model.rotary.reset_cache(torch_device)
    if spec.dummy_seed is not None:  # built with --dummy-weights at_load: no file to read
        from ingot.runtime.generated_weights import generate_weights

        logger.info("generating random weights from seed %d (--dummy-weights at_load)", spec.dummy_seed)
        generate_weights(model, spec, backend, rank, torch_device)
    else:
        _verify(spec, directory, rank)
        fill_weights(model, directory / rank_file(rank))
    for module in model.modules():
        if hasattr(module, "process_after_load"):
            module.process_after_load()
    if spec.tactics and torch_device.type == "cuda":
        install_tactics(model, spec.tactics)
    return spec, model.eval(), torch_device


def _verify(spec: EngineSpec, directory: Path, rank: int) -> None:
    """The rank file against its checksum in engine.json (ingot/integrity.py)."""
    from ingot.envs import skip_verify
    from ingot.integrity import verify_file

    name = rank_file(rank)
    recorded = spec.checksums.get(name)
    if skip_verify():
        logger.info("loading %s without checking its checksum (INGOT_SKIP_VERIFY)", name)
    elif recorded is None:
        logger.info("%s has no checksum in engine.json (built before checksums); loaded unchecked", name)
    elif (directory / name).is_file():  # a missing file is fill_weights' error to name
        verify_file(directory / name, recorded, directory)


def install_tactics(model: torch.nn.Module, tactics: dict[str, dict[str, str]]) -> None:
    """Give every matmul module (linear layers, lm_head) the tuned table of its GEMM name."""
    for module in model.modules():
        if hasattr(module, "gemm_name"):
            module.set_tactics(tactics.get(module.gemm_name))


def fill_weights(model: torch.nn.Module, path: Path) -> None:
    """Copy every tensor of the file into the parameter of the same name, checking dtype and shape."""
    params = model.state_dict()
    if not path.is_file():
        raise EngineError(f"{path} is missing; the engine is incomplete: rebuild it")
    try:
        with safe_open(str(path), framework="pt") as f:
            names = set(f.keys())
            missing = sorted(set(params) - names)
            if missing:
                raise EngineError(f"{path} lacks weights {missing[:5]}; rebuild the engine")
            for name in sorted(names):
                if name not in params:
                    raise EngineError(f"{path} has an unexpected weight {name!r}; rebuild the engine")
                tensor = f.get_tensor(name)
                _check_tensor(path, name, tensor, params[name])
                params[name].copy_(tensor)
    except (SafetensorError, OSError) as exc:
        raise EngineError(f"cannot read engine weights {path}: {exc}; rebuild the engine") from exc


def _check_tensor(path: Path, name: str, stored: torch.Tensor, param: torch.Tensor) -> None:
    if stored.dtype != param.dtype or stored.shape != param.shape:
        raise EngineError(
            f"{path}: weight {name!r} is stored as {str(stored.dtype).removeprefix('torch.')} "
            f"{tuple(stored.shape)}, but engine.json describes a model whose parameter is "
            f"{str(param.dtype).removeprefix('torch.')} {tuple(param.shape)}; the file does not belong to "
            "this engine.json: rebuild the engine")
