"""--load-format dummy: random weights at a model's real shapes, for benchmarks without a hub.

Like vLLM's dummy format: linear weights ~ U(-a, a) with a small a so activations stay finite
through many layers, norms = 1. The numbers mean nothing; the shapes, bytes and kernels are
exactly those of the real model, which is what a speed measurement needs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch

from ingot.errors import CheckpointError

DUMMY_RANGE = 1e-2


def read_config_json(path: str | Path) -> dict:
    """CONFIG may be a config.json file or a folder holding one."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"--load-format dummy needs a config.json; {path} does not exist") from exc
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc


def dummy_tensors(shapes: dict[str, tuple[int, ...]], dtype: torch.dtype, device: str,
                  seed: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    """Engine-layout tensors, generated on `device` (fast on a GPU) and handed back on the CPU."""
    generator = torch.Generator(device=device).manual_seed(seed)
    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            tensor = torch.ones(shape, dtype=dtype)
        else:
            tensor = torch.empty(shape, dtype=dtype, device=device).uniform_(-DUMMY_RANGE, DUMMY_RANGE,
                                                                              generator=generator)
        yield name, tensor.cpu()
