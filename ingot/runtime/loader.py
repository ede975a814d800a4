"""Load a built engine: read engine.json, check the device, mmap the weights and copy them in.

Loading builds nothing: the model is created on the meta device (no memory, no random
init), given uninitialised storage on the target device, and filled from the safetensors file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors import SafetensorError

from ingot.attention import AttentionBackend
from ingot.builder.build import TORCH_DTYPES
from ingot.builder.engine_format import EngineSpec, check_target, current_device, read_spec
from ingot.errors import EngineError
from ingot.models import model_class


def load_engine(directory: str | Path, backend: AttentionBackend, device: str | None = None,
                ) -> tuple[EngineSpec, torch.nn.Module, torch.device]:
    directory = Path(directory)
    spec = read_spec(directory)
    here = current_device(device)
    check_target(spec, here, directory)
    torch_device = torch.device(device or ("cuda" if here.kind == "cuda" else "cpu"))
    dtype = TORCH_DTYPES[spec.dtype]
    with torch.device("meta"):
        model = model_class(spec.model.architecture)(spec.model, backend, max_positions=spec.build.max_seq_len)
    model = model.to_empty(device=torch_device).to(dtype)
    model.rotary.reset_cache(torch_device)
    _fill_weights(model, directory / "rank0.safetensors")
    if spec.tactics and torch_device.type == "cuda":
        install_tactics(model, spec.tactics)
    return spec, model.eval(), torch_device


def install_tactics(model: torch.nn.Module, tactics: dict[str, dict[str, str]]) -> None:
    """Give each Linear the tuned GEMM table of its name (qkv_proj, o_proj, ...); lm_head too."""
    from ingot.layers.linear import Linear, TacticTable

    tables = {name: TacticTable(table) for name, table in tactics.items()}
    for module_name, module in model.named_modules():
        if isinstance(module, Linear):
            module.tactics = tables.get(module_name.rsplit(".", 1)[-1])
    model.lm_head_tactics = tables.get("lm_head")


def _fill_weights(model: torch.nn.Module, path: Path) -> None:
    params = model.state_dict()
    try:
        with safe_open(str(path), framework="pt") as f:
            names = set(f.keys())
            missing = sorted(set(params) - names)
            if missing:
                raise EngineError(f"{path} lacks weights {missing[:5]}; rebuild the engine")
            for name in names:
                if name not in params:
                    raise EngineError(f"{path} has an unexpected weight {name!r}; rebuild the engine")
                params[name].copy_(f.get_tensor(name))
    except (SafetensorError, OSError) as exc:
        raise EngineError(f"cannot read engine weights {path}: {exc}; rebuild the engine") from exc
