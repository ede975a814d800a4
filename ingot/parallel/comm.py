"""Collectives of the tensor-parallel group. With one rank they are the identity; with more,
they are torch.distributed calls over this stage's tensor-parallel group (ingot/parallel/state.py:
NCCL on GPUs, gloo on CPU)."""

from __future__ import annotations

import torch

from ingot.errors import EngineError


def _tp_group(tp_size: int):
    from ingot.parallel.state import current

    state = current()
    if state is None:
        raise EngineError(f"a layer split over tp={tp_size} ranks ran without an initialised torch.distributed "
                          "process group: each rank must run in its own process, started by a launcher")
    return state.tp_group


def all_reduce(x: torch.Tensor, tp_size: int) -> torch.Tensor:
    """Sum of x over the tensor-parallel ranks (in place)."""
    if tp_size == 1:
        return x
    import torch.distributed as dist

    dist.all_reduce(x, group=_tp_group(tp_size))
    return x


def all_gather_last_dim(x: torch.Tensor, tp_size: int) -> torch.Tensor:
    """Concatenate the ranks' x along the last dimension, rank 0 first."""
    if tp_size == 1:
        return x
    import torch.distributed as dist

    group = _tp_group(tp_size)
    parts = [torch.empty_like(x) for _ in range(tp_size)]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=-1)
