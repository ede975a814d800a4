"""The runtime half of INT4 weight-only quantization (W4A16): a linear layer whose weight is
stored in ingot's INT4 layout (int4_format.py) and multiplied with activations in the model dtype.

    CPU (development, CI)  the weight is dequantized once after loading and kept in the model dtype:
                           the same function as the GPU computes, at the memory of an unquantized layer
    CUDA, M <= 64 tokens   the fused W4A16 Triton kernel (ingot/kernels/w4a16.py): the 4-bit codes
                           are read and dequantized in registers, split over K for decode-sized M
    CUDA, larger M         dequantize to the model dtype, then cuBLAS (prefill is compute-bound)
The tiles, and where dequantize-then-cuBLAS takes over, are chosen per layer shape and token
count at build on the GPU (ingot/tactics/int4_tuning.py); an engine without a table uses the
defaults of _decode_config up to FUSED_MAX_TOKENS.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ingot.quantization.base import LinearMethod, mark_dims
from ingot.quantization.int4_format import PACK, dequantize, num_groups


class Int4LinearMethod(LinearMethod):
    def __init__(self, group_size: int, act_order: bool = False) -> None:
        self.group_size = group_size
        # GPTQ's activation order: the stored columns are the input columns in the order `perm`
        # (int32 (K,)), so each group stays contiguous; the input is read through it.
        self.act_order = act_order
        self.in_features = 0
        self.dequantized: torch.Tensor | None = None  # CPU: the weight in the model dtype, made once
        self.tactics: list[tuple[int, object]] | None = None  # (bucket, W4A16Config or None = dequantize)

    def create_weights(self, layer: nn.Module, in_features: int, out_features: int, dtype: torch.dtype) -> None:
        self.in_features = in_features
        groups = num_groups(in_features, self.group_size)
        layer.qweight = mark_dims(nn.Parameter(torch.empty(out_features, num_groups(in_features, PACK),
                                                           dtype=torch.int32), requires_grad=False), 0, 1)
        layer.scales = mark_dims(nn.Parameter(torch.empty(out_features, groups, dtype=dtype), requires_grad=False),
                                 0, 1)
        layer.zeros = mark_dims(nn.Parameter(torch.empty(out_features, groups, dtype=torch.uint8),
                                             requires_grad=False), 0, 1)
        if self.act_order:  # a permutation of the whole input: not sliced (act order needs tp = 1)
            layer.perm = mark_dims(nn.Parameter(torch.empty(in_features, dtype=torch.int32), requires_grad=False))

    def process_after_load(self, layer: nn.Module) -> None:
        if layer.qweight.device.type == "cpu":
            weight = self.weight(layer)
            self.dequantized = weight[:, torch.argsort(layer.perm.long())] if self.act_order else weight

    def weight(self, layer: nn.Module) -> torch.Tensor:
        """The (out, in) weight the stored codes stand for, in the model dtype (columns in stored order)."""
        return dequantize(layer.qweight, layer.scales, layer.zeros, self.in_features, self.group_size)

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.dequantized is not None:
            return F.linear(x, self.dequantized, bias)
        if self.act_order:
            x = x.index_select(-1, layer.perm.long())
        if x.is_cuda:
            config = self._config_for(x.shape[0])
            if config is not None:
                from ingot.kernels.w4a16 import w4a16_gemm

                return w4a16_gemm(x, layer.qweight, layer.scales, layer.zeros, self.group_size, bias, config)
        return F.linear(x, self.weight(layer), bias)

    def set_tactics(self, table: dict[str, str] | None) -> None:
        """The build's table {str(M bucket): W4A16 config name or "dequant"} for this layer's shape."""
        if not table:
            self.tactics = None
            return
        from ingot.kernels.w4a16 import W4A16Config
        from ingot.tactics.int4_tuning import DEQUANT

        self.tactics = sorted((int(m), None if name == DEQUANT else W4A16Config.parse(name)) for m, name in table.items())

    def _config_for(self, m: int):
        """The tiles for M tokens, None to dequantize and call cuBLAS."""
        if self.tactics is None:
            return _decode_config(m, self.in_features, self.group_size) if m <= FUSED_MAX_TOKENS else None
        for bucket, config in self.tactics:
            if m <= bucket:
                return config
        return self.tactics[-1][1]


FUSED_MAX_TOKENS = 64


def _decode_config(m: int, k: int, group_size: int):
    """Untuned tiles for decode-sized M (engines built without a GPU table): the winners of the
    H200 sweep on Llama-3.1-8B shapes (bench/w4a16_gpu.py), GEMV for one row, split K 8 ways."""
    from ingot.kernels.w4a16 import W4A16Config

    split = 8 if k >= 2048 else 1
    if m == 1:
        return W4A16Config(block_m=1, block_n=64, block_k=128, num_warps=2, num_stages=2, split_k=split)
    return W4A16Config(block_m=16 if m <= 16 else 64, block_n=128, block_k=128, num_warps=4, num_stages=3,
                       split_k=split)
