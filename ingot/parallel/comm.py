"""Collectives of the tensor-parallel group. With one rank they are the identity; with more,
they are torch.distributed calls over the process group the launcher initialised (one process
per rank: NCCL on GPUs, gloo on CPU)."""

from __future__ import annotations

import torch

from ingot.errors import EngineError


def _require_group(tp_size: int) -> None:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise EngineError(f"a layer split over tp={tp_size} ranks ran without an initialised torch.distributed "
                          "process group: each rank must run in its own process, started by a launcher")


def all_reduce(x: torch.Tensor, tp_size: int) -> torch.Tensor:
    """Sum of x over the tensor-parallel ranks (in place)."""
    if tp_size == 1:
        return x
    import torch.distributed as dist

    _require_group(tp_size)
    dist.all_reduce(x)
    return x


def all_gather_last_dim(x: torch.Tensor, tp_size: int) -> torch.Tensor:
    """Concatenate the ranks' x along the last dimension, rank 0 first."""
    if tp_size == 1:
        return x
    import torch.distributed as dist

    _require_group(tp_size)
    parts = [torch.empty_like(x) for _ in range(tp_size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=-1)
