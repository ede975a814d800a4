"""A worker: one rank other than 0 of a multi-rank engine (see launch.py).

It joins the job, sets up its slice exactly as rank 0 does (ingot/runtime/rank.py), then runs
every ForwardPlan rank 0 broadcasts until the stop plan comes. It keeps no request state: the
plan holds everything a forward pass needs.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist

from ingot.parallel.launch import WorkerArgs, device_of
from ingot.parallel.state import destroy, init_process_groups

logger = logging.getLogger("ingot")


def run_worker(rank: int, local_rank: int, args: WorkerArgs) -> None:
    from ingot.attention import get_backend
    from ingot.engine_format import read_spec
    from ingot.parallel.stage import StageRunner
    from ingot.runtime.engine import resolve_backend
    from ingot.runtime.rank import set_up_rank

    spec = read_spec(args.engine_dir)
    device = device_of(args.device_kind, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    state = init_process_groups(rank, spec.mapping, device, args.master_addr, args.master_port, args.timeout_s)
    try:
        backend = get_backend(resolve_backend(args.attention_backend, str(device)))
        parts = set_up_rank(args.engine_dir, backend, device, args.cache, args.enforce_eager, rank,
                            lambda n: _agree_min(n, state))
        stage = StageRunner(parts.model, parts.pool, device, spec.model.vocab_size, parts.graphs, state)
        while (plan := _next_plan(state)).stop is False:
            stage.run(plan)
    finally:
        destroy()


def _next_plan(state):
    box = [None]
    dist.broadcast_object_list(box, src=0, group=state.control)
    return box[0]


def _agree_min(value: int, state) -> int:
    tensor = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN, group=state.control)
    return int(tensor.item())
