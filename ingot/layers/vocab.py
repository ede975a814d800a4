"""The token embedding and the lm_head, split over tensor-parallel ranks by vocabulary rows.

The vocabulary is padded to a multiple of tp so every rank holds the same number of rows,
    rows_per_rank = ceil(vocab_size / tp),   rank r holds ids [r * rows_per_rank, (r + 1) * rows_per_rank);
padded rows are zero and their logits are cut off after the gather.

  embedding  each rank looks up the ids it holds (zeros for the others); the sum over ranks is the row
  lm_head    each rank computes the logits of its rows; they are concatenated over ranks

A tied lm_head (tie_word_embeddings) multiplies by the embedding's own weight: the tensor exists
once, in the embedding, and the engine stores it once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ingot.layers.context import LayerContext
from ingot.parallel.comm import all_gather_last_dim, all_reduce
from ingot.quantization.base import mark_dims
from ingot.tactics.table import TacticTable, dense_linear


def _vocab_rows(vocab_size: int, tp_size: int) -> int:
    return -(-vocab_size // tp_size)


def _shard_vocab_rows(full: torch.Tensor, vocab_size: int, tp_rank: int, tp_size: int) -> torch.Tensor:
    """Rows [r * rows, (r + 1) * rows) of the table padded with zero rows to rows * tp."""
    rows = _vocab_rows(vocab_size, tp_size)
    start = tp_rank * rows
    part = full[start:start + rows]
    if part.shape[0] < rows:
        part = torch.cat([part, part.new_zeros((rows - part.shape[0], *part.shape[1:]))])
    return part.contiguous()


class VocabEmbedding(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, ctx: LayerContext) -> None:
        super().__init__()
        self.vocab_size, self.tp_rank, self.tp_size = vocab_size, ctx.tp_rank, ctx.tp_size
        self.rows = _vocab_rows(vocab_size, ctx.tp_size)
        self.first_id = ctx.tp_rank * self.rows
        self.weight = mark_dims(nn.Parameter(torch.empty(self.rows, hidden_size), requires_grad=False), 0)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(T,) int64 -> (T, hidden)."""
        if self.tp_size == 1:
            return F.embedding(input_ids, self.weight)
        local = input_ids - self.first_id
        held = (local >= 0) & (local < self.rows)
        rows = F.embedding(local.clamp(0, self.rows - 1), self.weight) * held.unsqueeze(-1).to(self.weight.dtype)
        return all_reduce(rows, self.tp_size)

    def shard(self, param_name: str, full: torch.Tensor) -> torch.Tensor:
        return _shard_vocab_rows(full, self.vocab_size, self.tp_rank, self.tp_size)


class LMHead(nn.Module):
    """hidden (N, hidden) -> logits (N, vocab) fp32, with its own weight and linear method."""

    def __init__(self, vocab_size: int, hidden_size: int, ctx: LayerContext, prefix: str = "lm_head") -> None:
        super().__init__()
        self.vocab_size, self.tp_rank, self.tp_size = vocab_size, ctx.tp_rank, ctx.tp_size
        self.gemm_name = prefix
        self.method = ctx.linear_method(prefix)
        self.method.create_weights(self, hidden_size, _vocab_rows(vocab_size, ctx.tp_size), torch.get_default_dtype())

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = all_gather_last_dim(self.method.apply(self, hidden, None), self.tp_size)
        return logits[:, : self.vocab_size].float()

    def shard(self, param_name: str, full: torch.Tensor) -> torch.Tensor:
        param = getattr(self, param_name)
        if getattr(param, "output_dim", None) != 0:
            return full  # e.g. a per-tensor scale: every rank keeps it
        return _shard_vocab_rows(full, self.vocab_size, self.tp_rank, self.tp_size)

    def set_tactics(self, table: dict[str, str] | None) -> None:
        self.method.set_tactics(table)

    def process_after_load(self) -> None:
        self.method.process_after_load(self)


class TiedLMHead(nn.Module):
    """The lm_head of a model with tied embeddings: logits = hidden @ embedding^T."""

    def __init__(self, embedding: VocabEmbedding, prefix: str = "lm_head") -> None:
        super().__init__()
        self._embedding = (embedding,)  # a tuple: not registered as a child, so the weight is stored once
        self.vocab_size, self.tp_size = embedding.vocab_size, embedding.tp_size
        self.gemm_name = prefix
        self.tactics: TacticTable | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        local = dense_linear(hidden, self._embedding[0].weight, None, self.tactics)
        return all_gather_last_dim(local, self.tp_size)[:, : self.vocab_size].float()

    def set_tactics(self, table: dict[str, str] | None) -> None:
        self.tactics = TacticTable(table) if table else None
