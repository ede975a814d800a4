"""Linear layers: a partitioning over tensor-parallel ranks, and a method that owns the weights.

y = x W^T + b, W stored (out_features, in_features). How W is split over tp ranks:

    ReplicatedLinear            every rank holds all of W
    ColumnParallelLinear        rank r holds a slice of W's rows (output features); y comes out split
    MergedColumnParallelLinear  matrices stacked along the output (gate | up): rank r holds its slice
                                of each, so its y is [gate_r | up_r]
    QKVParallelLinear           q | k | v split by whole heads; KV heads are replicated when the ranks
                                outnumber them (every rank needs the KV heads its query heads read)
    RowParallelLinear           rank r holds a slice of W's columns (input features); each rank's y is
                                a partial sum, summed over ranks (all-reduce); the bias is added once

What the parameters are (a bf16 matrix, fp8 values and scales, packed int4 ...) is the method's
business (ingot/quantization). Each parameter is marked with the dimension that runs along the
output features and the one along the input features; `shard` cuts a rank's slice of the full
tensor along those marks, in proportion when a dimension is packed or grouped (a scale per 128
inputs shards with its 128 inputs). The builder calls `shard` once per rank and tensor, so engine
files hold each rank's slice and loading is a plain copy.
"""

from __future__ import annotations

from fractions import Fraction

import torch
from torch import nn

from ingot.layers.context import LayerContext
from ingot.parallel.comm import all_reduce
from ingot.parallel.mapping import kv_head_start, kv_heads_per_rank
from ingot.quantization.base import mark_dims

Section = tuple[int, int]  # (start, size) in the full layer's feature index


class LinearBase(nn.Module):
    """A linear layer of this rank: its slices of the output and input features and its method."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool, ctx: LayerContext, prefix: str) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features  # of the whole layer
        self.tp_rank, self.tp_size = ctx.tp_rank, ctx.tp_size
        self.prefix = prefix
        self.gemm_name = prefix.rsplit(".", 1)[-1]  # the key of its build-time tactic table
        self.method = ctx.linear_method(prefix)
        dtype = torch.get_default_dtype()
        out_here = sum(size for _, size in self.output_sections())
        self.method.create_weights(self, self.input_section()[1], out_here, dtype)
        self.bias = mark_dims(nn.Parameter(torch.empty(out_here, dtype=dtype), requires_grad=False),
                              output_dim=0) if bias else None

    def output_sections(self) -> list[Section]:
        """The rows of the full W this rank holds, in order."""
        return [(0, self.out_features)]

    def input_section(self) -> Section:
        """The columns of the full W this rank holds."""
        return (0, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.apply(self, x, self.bias)

    def set_tactics(self, table: dict[str, str] | None) -> None:
        self.method.set_tactics(table)

    def process_after_load(self) -> None:
        self.method.process_after_load(self)

    def shard(self, param_name: str, full: torch.Tensor) -> torch.Tensor:
        """This rank's slice of the full tensor of parameter `param_name`."""
        param = getattr(self, param_name)
        part = full
        if getattr(param, "output_dim", None) is not None:
            part = _take(part, param.output_dim, self.output_sections(), self.out_features)
        if getattr(param, "input_dim", None) is not None:
            part = _take(part, param.input_dim, [self.input_section()], self.in_features)
        return part.contiguous()


def _take(tensor: torch.Tensor, dim: int, sections: list[Section], features: int) -> torch.Tensor:
    """Cut `sections` (in feature units) out of `dim`, scaled when that dim is packed or grouped."""
    ratio = Fraction(tensor.shape[dim], features)
    pieces = []
    for start, size in sections:
        begin, length = start * ratio, size * ratio
        if begin.denominator != 1 or length.denominator != 1:
            raise ValueError(f"cannot cut features [{start}, {start + size}) out of a dimension of "
                             f"{tensor.shape[dim]} for {features} features: not a whole number of elements")
        pieces.append(tensor.narrow(dim, int(begin), int(length)))
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=dim)


class ReplicatedLinear(LinearBase):
    pass


class ColumnParallelLinear(LinearBase):
    def output_sections(self) -> list[Section]:
        size = self.out_features // self.tp_size
        return [(self.tp_rank * size, size)]


class MergedColumnParallelLinear(LinearBase):
    """Several column-parallel matrices stacked along the output, e.g. gate_up = [gate | up]."""

    def __init__(self, in_features: int, output_sizes: list[int], *, bias: bool, ctx: LayerContext,
                 prefix: str) -> None:
        self.output_sizes = list(output_sizes)
        super().__init__(in_features, sum(output_sizes), bias=bias, ctx=ctx, prefix=prefix)

    def output_sections(self) -> list[Section]:
        sections, offset = [], 0
        for size in self.output_sizes:
            share = size // self.tp_size
            sections.append((offset + self.tp_rank * share, share))
            offset += size
        return sections


class QKVParallelLinear(LinearBase):
    """[q | k | v] of all heads; rank r holds its query heads and the KV heads they read."""

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, *, bias: bool,
                 ctx: LayerContext, prefix: str) -> None:
        self.head_dim, self.total_heads, self.total_kv_heads = head_dim, num_heads, num_kv_heads
        self.num_heads = num_heads // ctx.tp_size  # on this rank
        self.num_kv_heads = kv_heads_per_rank(num_kv_heads, ctx.tp_size)
        super().__init__(hidden_size, (num_heads + 2 * num_kv_heads) * head_dim, bias=bias, ctx=ctx, prefix=prefix)

    def output_sections(self) -> list[Section]:
        d = self.head_dim
        q_size, kv_size = self.total_heads * d, self.total_kv_heads * d
        kv_start = kv_head_start(self.total_kv_heads, self.tp_size, self.tp_rank) * d
        kv_len = self.num_kv_heads * d
        return [(self.tp_rank * self.num_heads * d, self.num_heads * d),
                (q_size + kv_start, kv_len), (q_size + kv_size + kv_start, kv_len)]


class RowParallelLinear(LinearBase):
    """Each rank multiplies its slice of the input features; the partial results are summed."""

    def input_section(self) -> Section:
        size = self.in_features // self.tp_size
        return (self.tp_rank * size, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The bias joins on rank 0 only, so the sum over ranks adds it once.
        partial = self.method.apply(self, x, self.bias if self.tp_rank == 0 else None)
        return all_reduce(partial, self.tp_size)
