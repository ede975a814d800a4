"""out = x @ W^T (+ bias) with W stored as INT4 codes (ingot/quantization/int4_format.py): the
weight-only GEMM of INT4 engines. The weight is dequantized in registers, tile by tile, and never
written out in 16 bits.

x (M, K) fp16/bf16 (fp32 in tests); qweight int32 (N, ceil(K / 8)), column k in bits 4 (k % 8)
of word k // 8; scales (N, ceil(K / G)) in x's dtype; zeros uint8 (N, ceil(K / G)). A K tile
(BK columns) lies inside one group (BK divides G, tiles start at multiples of BK), so a tile
needs one scale and one zero point per row: w = (code - zero) * scale, then tl.dot in x's dtype
with fp32 accumulation.

Decode-sized M gives few (M, N) tiles; SPLIT_K > 1 cuts K into that many ranges, each program
writes its fp32 partial sum, and the partials are added in a fixed order (deterministic, no
atomics). A config "w4a16:BMxBNxBK:wW:sS:kK" is what an engine records.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ingot.kernels._checks import check_dtype, check_same_device, check_shape


@dataclass(frozen=True)
class W4A16Config:
    block_m: int = 16
    block_n: int = 64
    block_k: int = 32
    num_warps: int = 4
    num_stages: int = 3
    split_k: int = 1

    @property
    def name(self) -> str:
        return (f"w4a16:{self.block_m}x{self.block_n}x{self.block_k}:w{self.num_warps}:s{self.num_stages}"
                f":k{self.split_k}")

    @staticmethod
    def parse(name: str) -> "W4A16Config":
        try:
            kind, blocks, warps, stages, split = name.split(":")
            bm, bn, bk = (int(b) for b in blocks.split("x"))
            assert kind == "w4a16" and warps[0] == "w" and stages[0] == "s" and split[0] == "k"
            return W4A16Config(bm, bn, bk, int(warps[1:]), int(stages[1:]), int(split[1:]))
        except (ValueError, AssertionError, IndexError):
            raise ValueError(f"tactic {name!r} is not of the form 'w4a16:BMxBNxBK:wW:sS:kK'") from None


@triton.jit(do_not_specialize=["M"])
def _w4a16_kernel(x_ptr, qw_ptr, scale_ptr, zero_ptr, out_ptr, M, N, K, k_per_split,
                  stride_xm, stride_qn, stride_sn, stride_zn, stride_os, stride_om,
                  G: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_m, pid_n, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rows = pid_m * BM + tl.arange(0, BM)
    cols = pid_n * BN + tl.arange(0, BN)
    ks = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    k_begin = split * k_per_split
    k_end = tl.minimum(k_begin + k_per_split, K)
    for k0 in range(k_begin, k_end, BK):
        kk = k0 + ks
        k_ok = kk < k_end
        a = tl.load(x_ptr + rows.to(tl.int64)[:, None] * stride_xm + kk[None, :],
                    mask=(rows[:, None] < M) & k_ok[None, :], other=0.0)
        col_ok = cols < N
        # each word once: (BN, BK / 8) words -> (BN, BK / 8, 8) nibbles -> (BN, BK), k = word * 8 + nibble
        wk = k0 // 8 + tl.arange(0, BK // 8)
        words = tl.load(qw_ptr + cols.to(tl.int64)[:, None] * stride_qn + wk[None, :],
                        mask=col_ok[:, None] & (wk < (k_end + 7) // 8)[None, :], other=0)
        nibbles = (words[:, :, None] >> (tl.arange(0, 8) * 4)[None, None, :]) & 0xF
        codes = tl.reshape(nibbles, (BN, BK))
        group = k0 // G
        scale = tl.load(scale_ptr + cols.to(tl.int64) * stride_sn + group, mask=col_ok, other=0.0)
        zero = tl.load(zero_ptr + cols.to(tl.int64) * stride_zn + group, mask=col_ok, other=0)
        w = ((codes - zero.to(tl.int32)[:, None]).to(tl.float32) * scale.to(tl.float32)[:, None]).to(a.dtype)
        acc = tl.dot(a, tl.trans(w), acc)
    out = out_ptr + split * stride_os + rows.to(tl.int64)[:, None] * stride_om + cols[None, :]
    tl.store(out, acc, mask=(rows[:, None] < M) & (cols[None, :] < N))


def w4a16_gemm(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int,
               bias: torch.Tensor | None = None, config: W4A16Config = W4A16Config()) -> torch.Tensor:
    """x (M, K) -> (M, N) in x's dtype, W given by its INT4 codes (see the module docstring)."""
    m, k = x.shape
    n = qweight.shape[0]
    _check(x, qweight, scales, zeros, group_size, config, k, n)
    k_per_split = triton.cdiv(triton.cdiv(k, config.block_k), config.split_k) * config.block_k
    partial = torch.empty((config.split_k, m, n), dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(m, config.block_m), triton.cdiv(n, config.block_n), config.split_k)
    _w4a16_kernel[grid](x, qweight, scales, zeros, partial, m, n, k, k_per_split,
                        x.stride(0), qweight.stride(0), scales.stride(0), zeros.stride(0), partial.stride(0),
                        partial.stride(1), G=group_size, BM=config.block_m, BN=config.block_n, BK=config.block_k,
                        num_warps=config.num_warps, num_stages=config.num_stages)
    out = partial[0] if config.split_k == 1 else partial.sum(dim=0)
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


def _check(x, qweight, scales, zeros, group_size, config, k, n) -> None:
    check_shape(x, "x", (None, None))
    check_dtype(x, "x")
    check_shape(qweight, "qweight", (n, (k + 7) // 8))
    if qweight.dtype != torch.int32:
        raise ValueError(f"qweight: dtype {qweight.dtype}, expected torch.int32")
    groups = (k + group_size - 1) // group_size
    check_shape(scales, "scales", (n, groups))
    check_shape(zeros, "zeros", (n, groups))
    if zeros.dtype != torch.uint8:
        raise ValueError(f"zeros: dtype {zeros.dtype}, expected torch.uint8")
    if config.block_k < 16:
        raise ValueError(f"block_k {config.block_k} must be at least 16: a K tile is whole 8-code words, a power of two")
    if group_size % config.block_k:
        raise ValueError(f"block_k {config.block_k} must divide the group size {group_size}: a K tile reads one group")
    for name, t in (("x", x), ("qweight", qweight), ("scales", scales), ("zeros", zeros)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name}: the last dimension must be contiguous")
    check_same_device(x=x, qweight=qweight, scales=scales, zeros=zeros)
