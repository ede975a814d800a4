"""What every rank of an engine sets up, the same way on rank 0 (LLMEngine) and on each worker
(ingot/parallel/worker.py): its slice of the model, its KV pool, its CUDA graphs.

The pool's block count must be the same on every rank (rank 0's allocator hands out block ids
that index every rank's pool), so each rank sizes its pool from its own memory and layers, and
all take the smallest (`agree_min`). CUDA graphs are captured for single-rank engines only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ingot.attention import AttentionBackend
from ingot.config import CacheConfig
from ingot.engine_format import EngineSpec, torch_dtype
from ingot.parallel.mapping import kv_heads_per_rank
from ingot.runtime.cuda_graphs import StepGraphs
from ingot.runtime.kv_cache import KVCachePool, blocks_needed
from ingot.runtime.kv_sizing import PoolPlan, plan_pool
from ingot.runtime.loader import load_engine

logger = logging.getLogger("ingot")


@dataclass
class RankParts:
    spec: EngineSpec
    model: torch.nn.Module
    device: torch.device
    pool_plan: PoolPlan
    pool: KVCachePool
    graphs: StepGraphs | None


def set_up_rank(engine_dir: str | Path, backend: AttentionBackend, device: str | torch.device | None,
                cache: CacheConfig, enforce_eager: bool, rank: int = 0,
                agree_min: Callable[[int], int] = lambda n: n) -> RankParts:
    spec, model, device = load_engine(engine_dir, backend, device, rank)
    layout = spec.mapping.ranks[rank]
    cfg, build = spec.model, spec.build
    num_kv_heads = kv_heads_per_rank(cfg.num_kv_heads, layout.tp_size)
    pool_plan = plan_pool(spec, cache, device, len(layout.layer_ids), num_kv_heads)
    pool_plan = pool_plan.with_blocks(agree_min(pool_plan.num_blocks))
    if rank == 0:
        logger.info("%s", pool_plan.describe())
    pool = KVCachePool(len(layout.layer_ids), pool_plan.num_blocks, build.tokens_per_block, num_kv_heads,
                       cfg.head_dim, torch_dtype(spec.kv_dtype), device)
    graphs = None
    # One rank only: capturing the all-reduces of tensor parallelism (torch.distributed NCCL) in the
    # graphs hung on two H200s (2026-11-30) and is not used until it is made to work and tested there.
    if not enforce_eager and device.type == "cuda" and backend.supports_cuda_graphs and build.cuda_graph_batch_sizes \
            and spec.world_size == 1:
        speculative = spec.speculative
        verify = (1 + speculative.max_draft_len,) if speculative.enabled else ()  # a step verifying full drafts
        graphs = StepGraphs(model, backend, pool.layers, build.cuda_graph_batch_sizes, (1, *verify),
                            blocks_needed(build.max_seq_len, build.tokens_per_block), build.max_seq_len, device)
        graphs.capture()
    return RankParts(spec, model, device, pool_plan, pool, graphs)
