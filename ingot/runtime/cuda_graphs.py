"""CUDA graphs for steps in which every sequence computes the same number of tokens.

A graph is keyed by (batch size, tokens per sequence): decode steps are (B, 1); a step verifying
k draft tokens per sequence is (B, 1 + k). The batch sizes and tokens-per-sequence counts are
chosen at build time; a step is padded up to the nearest captured batch size and replayed,
anything else (prompt chunks, mixed counts) runs eagerly. Everything a graph reads lives in
static buffers refilled before each replay:

    input_ids, positions  (B * q,)       model inputs
    attention buffers     seq_lens (B,), block_tables (B, max_blocks_per_seq), slot_mapping (B * q,)
    outputs               logits (B * q, vocab) fp32 and hidden states (B * q, hidden): every
                          position of a captured step is sampled

What padded rows hold is the attention backend's rule (AttentionBackend.graph_padding); the
metadata a capture sees is its capture hook (graph_metadata). Padded rows read token 0 at
position 0 and their logits are never used.
"""

from __future__ import annotations

import bisect
import logging

import numpy as np
import torch

from ingot.attention import AttentionBackend, GraphBuffers

logger = logging.getLogger("ingot")


class StepGraphs:
    def __init__(self, model, backend: AttentionBackend, kv_layers: list[torch.Tensor], batch_sizes: tuple[int, ...],
                 tokens_per_seq: tuple[int, ...], max_blocks: int, max_seq_len: int, device: torch.device) -> None:
        self.model, self.backend, self.kv_layers = model, backend, kv_layers
        self.batch_sizes = tuple(sorted(batch_sizes))
        self.tokens_per_seq = tuple(sorted(set(tokens_per_seq)))
        self.max_seq_len = max_seq_len
        rows, width = self.batch_sizes[-1], self.batch_sizes[-1] * self.tokens_per_seq[-1]
        i32, i64 = dict(dtype=torch.int32, device=device), dict(dtype=torch.int64, device=device)
        self.input_ids = torch.zeros(width, **i64)
        self.positions = torch.zeros(width, **i64)
        self.buffers = GraphBuffers(
            seq_lens=torch.ones(rows, **i32), block_tables=torch.zeros(rows, max_blocks, **i32),
            slot_mapping=torch.full((width,), -1, **i64),
            query_starts={q: torch.arange(0, (rows + 1) * q, q, **i32) for q in self.tokens_per_seq})
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self.memory_pool = None

    @property
    def max_batch_size(self) -> int:
        return self.batch_sizes[-1]

    @property
    def max_blocks(self) -> int:
        return self.buffers.block_tables.shape[1]

    def key_for(self, num_seqs: int, tokens_per_seq: int | None) -> tuple[int, int] | None:
        """The captured (padded batch size, q) a step of num_seqs x tokens_per_seq replays, or None."""
        if tokens_per_seq not in self.tokens_per_seq or num_seqs > self.max_batch_size:
            return None
        return self.batch_sizes[bisect.bisect_left(self.batch_sizes, num_seqs)], tokens_per_seq

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture largest first so smaller graphs reuse the same memory pool."""
        for q in self.tokens_per_seq:
            for size in reversed(self.batch_sizes):
                self._model_step(size, q)  # warm-up: Triton compiles and autotunes outside capture
                torch.cuda.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self.memory_pool):
                    logits, hidden = self._model_step(size, q)
                self.memory_pool = graph.pool()
                self.graphs[(size, q)] = (graph, logits, hidden)
        logger.info("captured CUDA graphs for batch sizes %s x tokens per sequence %s",
                    list(self.batch_sizes), list(self.tokens_per_seq))

    def _model_step(self, size: int, q: int) -> tuple[torch.Tensor, torch.Tensor]:
        meta = self.backend.graph_metadata(self.buffers, size, q, self.max_seq_len)
        hidden = self.model(self.input_ids[: size * q], self.positions[: size * q], self.kv_layers, meta)
        return self.model.compute_logits(hidden), hidden

    def replay(self, key: tuple[int, int], input_ids: list[int], positions: list[int], slots: list[int],
               seq_lens: list[int], tables: np.ndarray, device_ids: torch.Tensor | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run a captured step for len(seq_lens) sequences (flat token lists of q per sequence);
        return the logits and hidden states of their len(input_ids) positions. tables: (padded size, max_blocks) int32
        with rows past the real sequences already holding the padding block."""
        size, q = key
        n, tokens = len(seq_lens), len(input_ids)
        pad = self.backend.graph_padding(q)
        # One host array, one copy: ids | positions | slots (size * q each) | seq_lens (size).
        width = size * q
        packed = np.empty(3 * width + size, dtype=np.int64)
        ids, pos, slot, lens = (packed[:width], packed[width:2 * width], packed[2 * width:3 * width],
                                packed[3 * width:])
        ids[:tokens], pos[:tokens], slot[:tokens], lens[:n] = input_ids, positions, slots, seq_lens
        ids[tokens:], pos[tokens:], slot[tokens:], lens[n:] = 0, 0, pad.slot, pad.seq_len
        staged = torch.from_numpy(packed).to(self.input_ids.device, non_blocking=True)
        self.input_ids[:width].copy_(staged[:width])
        self.positions[:width].copy_(staged[width:2 * width])
        self.buffers.slot_mapping[:width].copy_(staged[2 * width:3 * width])
        self.buffers.seq_lens[:size].copy_(staged[3 * width:])
        self.buffers.block_tables[:size].copy_(torch.from_numpy(tables), non_blocking=True)
        if device_ids is not None:  # tokens sampled by the previous step, never seen by the host
            self.input_ids[:tokens].copy_(device_ids)
        graph, logits, hidden = self.graphs[key]
        graph.replay()
        return logits[:tokens], hidden[:tokens]
