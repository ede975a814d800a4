"""The process groups of this process, set once when a multi-rank engine starts (launch.py).

    control   every rank, gloo: the plain-data step plans rank 0 broadcasts, and the small objects
              stages return to it (CPU sockets, also when the tensors live on GPUs)
    tp group  the ranks of this pipeline stage: the all-reduces and gathers of tensor parallelism
              (NCCL on GPUs, gloo on CPU)
Pipeline stages exchange hidden states point to point over the default group.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ingot.parallel.mapping import ParallelMapping, RankLayout


@dataclass
class ParallelState:
    rank: int
    mapping: ParallelMapping
    device: torch.device
    control: object  # ProcessGroup
    tp_group: object  # ProcessGroup of this rank's stage

    @property
    def layout(self) -> RankLayout:
        return self.mapping.ranks[self.rank]

    @property
    def world_size(self) -> int:
        return self.mapping.world_size

    def rank_of(self, pp_rank: int, tp_rank: int) -> int:
        return pp_rank * self.mapping.config.tp + tp_rank

    @property
    def last_stage_leader(self) -> int:
        """The rank that holds the logits of the last stage and hands them to rank 0."""
        return self.rank_of(self.mapping.config.pp - 1, 0)


_STATE: ParallelState | None = None


def current() -> ParallelState | None:
    return _STATE


def init_process_groups(rank: int, mapping: ParallelMapping, device: torch.device, master_addr: str,
                        master_port: int, timeout_s: float) -> ParallelState:
    """Join the job (every rank calls this, in any order) and make the groups (same order on every rank)."""
    global _STATE
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s)
    dist.init_process_group(backend, init_method=f"tcp://{master_addr}:{master_port}", rank=rank,
                            world_size=mapping.world_size, timeout=timeout,
                            device_id=device if device.type == "cuda" else None)
    control = dist.new_group(backend="gloo", timeout=timeout) if backend == "nccl" else dist.group.WORLD
    tp, pp = mapping.config.tp, mapping.config.pp
    tp_groups = [dist.new_group(list(range(stage * tp, (stage + 1) * tp)), timeout=timeout) for stage in range(pp)]
    _STATE = ParallelState(rank, mapping, device, control, tp_groups[mapping.ranks[rank].pp_rank])
    return _STATE


def destroy() -> None:
    global _STATE
    if dist.is_initialized():
        dist.destroy_process_group()
    _STATE = None
