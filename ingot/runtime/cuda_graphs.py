"""CUDA graphs for decode steps: one graph per batch size chosen at build time.

A pure-decode step (every sequence computes exactly one token) is padded up to the nearest
captured size and replayed; prompt chunks run eagerly. Everything the graph reads lives in
static buffers that are refilled before each replay:

    input_ids, positions, slot_mapping  (B,)          seq_lens (B,)   query_start_loc (B+1,) = 0..B
    block_tables                        (B, max_blocks_per_seq)        logits out (B, vocab) fp32

Padded rows are harmless: they read token 0 at position 0, write their K/V into the reserved
null block 0, and attend to that one slot; their logits are never used. Attention kernels in
the graph must take their grid from static shapes only (B, max_blocks_per_seq, max_seq_len),
never from this step's actual lengths, which they read from seq_lens on the device.
"""

from __future__ import annotations

import bisect
import logging

import numpy as np
import torch

from ingot.attention import AttentionMetadata

logger = logging.getLogger("ingot")


class DecodeGraphs:
    def __init__(self, model, kv_layers: list[torch.Tensor], batch_sizes: tuple[int, ...], max_blocks: int,
                 max_seq_len: int, tokens_per_block: int, device: torch.device) -> None:
        self.model, self.kv_layers = model, kv_layers
        self.batch_sizes = tuple(sorted(batch_sizes))
        self.max_seq_len, self.tokens_per_block = max_seq_len, tokens_per_block
        largest = self.batch_sizes[-1]
        i32, i64 = dict(dtype=torch.int32, device=device), dict(dtype=torch.int64, device=device)
        self.input_ids = torch.zeros(largest, **i64)
        self.positions = torch.zeros(largest, **i64)
        self.slot_mapping = torch.zeros(largest, **i64)
        self.seq_lens = torch.ones(largest, **i32)
        self.query_start_loc = torch.arange(largest + 1, **i32)
        self.block_tables = torch.zeros(largest, max_blocks, **i32)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.memory_pool = None

    @property
    def max_batch_size(self) -> int:
        return self.batch_sizes[-1]

    def padded_size(self, batch: int) -> int:
        return self.batch_sizes[bisect.bisect_left(self.batch_sizes, batch)]

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture largest first so smaller graphs reuse the same memory pool."""
        for size in reversed(self.batch_sizes):
            self.model_step(size)  # warm-up: Triton compiles and autotunes outside capture
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.memory_pool):
                logits = self.model_step(size)
            self.memory_pool = graph.pool()
            self.graphs[size] = (graph, logits)
        logger.info("captured CUDA graphs for decode batch sizes %s", list(self.batch_sizes))

    def model_step(self, size: int) -> torch.Tensor:
        meta = AttentionMetadata(
            query_start_loc=self.query_start_loc[: size + 1], seq_lens=self.seq_lens[:size],
            block_tables=self.block_tables[:size], slot_mapping=self.slot_mapping[:size],
            query_start_loc_cpu=list(range(size + 1)), seq_lens_cpu=[self.max_seq_len] * size,
            max_query_len=1, max_seq_len=self.max_seq_len)
        hidden = self.model(self.input_ids[:size], self.positions[:size], self.kv_layers, meta)
        return self.model.compute_logits(hidden)

    @property
    def max_blocks(self) -> int:
        return self.block_tables.shape[1]

    def replay(self, input_ids: list[int], positions: list[int], slots: list[int], seq_lens: list[int],
               tables: np.ndarray, device_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Run a decode step of len(input_ids) sequences; returns their logits (n, vocab).
        tables: (padded_size(n), max_blocks) int32, rows past n all zeros."""
        n = len(input_ids)
        size = self.padded_size(n)
        # One host array, one copy: ids | positions | slots | seq_lens, padded rows as documented.
        packed = np.empty((4, size), dtype=np.int64)
        packed[0, :n], packed[1, :n], packed[2, :n], packed[3, :n] = input_ids, positions, slots, seq_lens
        packed[:3, n:], packed[3, n:] = 0, 1
        staged = torch.from_numpy(packed).to(self.input_ids.device, non_blocking=True)
        self.input_ids[:size].copy_(staged[0])
        self.positions[:size].copy_(staged[1])
        self.slot_mapping[:size].copy_(staged[2])
        self.seq_lens[:size].copy_(staged[3])
        self.block_tables[:size].copy_(torch.from_numpy(tables), non_blocking=True)
        if device_ids is not None:  # tokens sampled by the previous step, never seen by the host
            self.input_ids[:n].copy_(device_ids)
        graph, logits = self.graphs[size]
        graph.replay()
        return logits[:n]
