"""Random weights at a model's real shapes (--load-format dummy), for benchmarks without a hub.

Like vLLM's dummy format: linear weights ~ U(-a, a) with a small a so activations stay finite
through many layers, norms and scales (an FP8 KV cache's) = 1. The numbers mean nothing; the shapes, bytes and kernels are
exactly those of the real model, which is what a speed measurement needs.

Two users: the builder, which writes such weights into the engine files (--dummy-weights file),
and the loader, which generates them straight into the model's parameters from the seed that
engine.json records (--dummy-weights at_load: nothing is written, so a 70B engine needs no 70 GB
of disk and loads in seconds). This module imports only torch, so the runtime may use it.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

DUMMY_RANGE = 1e-2


def random_tensors(shapes: dict[str, tuple[int, ...]], dtype: torch.dtype, device: str | torch.device,
                   seed: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor on `device`) for every name of `shapes`, in order, from one seeded generator."""
    generator = torch.Generator(device=device).manual_seed(seed)
    for name, shape in shapes.items():
        if name.endswith(("norm.weight", "_scale")):
            yield name, torch.ones(shape, dtype=dtype, device=device)
        else:
            yield name, torch.empty(shape, dtype=dtype, device=device).uniform_(-DUMMY_RANGE, DUMMY_RANGE,
                                                                                 generator=generator)
