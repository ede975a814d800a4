"""out = x @ W^T (+ bias) with W stored as INT4 codes (ingot/quantization/int4_format.py): the
weight-only GEMM of INT4 engines. The weight is dequantized in registers, tile by tile, and never
written out in 16 bits.

x (M, K) fp16/bf16 (fp32 in tests); qweight int32 (N, ceil(K / 8)), column k in bits 4 (k % 8)
of word k // 8; scales (N, ceil(K / G)) in x's dtype; zeros uint8 (N, ceil(K / G)); w = (code - zero) * scale.

A tile of BK columns is BK / 8 words per output row, each loaded once. It is consumed as eight
"nibble planes": plane j holds columns 8 w + j of every word w, i.e. (words >> 4 j) & 0xF, and is
multiplied with the matching strided columns of x. No codes are shuffled into column order (a
register reshape that made a first version run at 13% of the copy bandwidth on the H200).

Two kernels, by the config's block_m:
    block_m = 1   GEMV: one program per row of x, multiply-add in fp32 (decode at batch 1, where a
                  tensor-core tile would be 15/16 padding)
    block_m >= 16 tl.dot per plane (BK >= 128 so a plane has >= 16 columns)
When a tile lies inside one group (G % BK == 0), the planes multiply the integer (code - zero),
exact in 16 bits, and the row's scale is applied once per tile; otherwise each word's group scale
is applied to the plane before the dot.

SPLIT_K > 1 cuts K into that many ranges for decode-sized M (few (M, N) tiles would leave SMs
idle): each program writes its fp32 partial sum and the partials are added in a fixed order
(deterministic, no atomics). With SPLIT_K = 1 the kernel adds the bias and writes x's dtype. A
config "w4a16:BMxBNxBK:wW:sS:kK" is what an engine records.
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
    block_k: int = 128
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


@triton.jit
def _group_scale_zero(scale_ptr, zero_ptr, cols, col_ok, stride_sn, stride_zn, k0, word_in_tile, K,
                      G: tl.constexpr, BK: tl.constexpr):
    """Per row (BN,) when the tile lies in one group, else per row and word (BN, BK / 8); words
    past K (the last tile's tail, multiplied by zeros of x) read the last group."""
    if G % BK == 0:
        group = k0 // G
        scale = tl.load(scale_ptr + cols.to(tl.int64) * stride_sn + group, mask=col_ok, other=0.0).to(tl.float32)
        zero = tl.load(zero_ptr + cols.to(tl.int64) * stride_zn + group, mask=col_ok, other=0).to(tl.int32)
    else:
        groups = tl.minimum((k0 + 8 * word_in_tile) // G, (K - 1) // G)[None, :]
        scale = tl.load(scale_ptr + cols.to(tl.int64)[:, None] * stride_sn + groups, mask=col_ok[:, None],
                        other=0.0).to(tl.float32)
        zero = tl.load(zero_ptr + cols.to(tl.int64)[:, None] * stride_zn + groups, mask=col_ok[:, None],
                       other=0).to(tl.int32)
    return scale, zero


@triton.jit
def _tile_words(qw_ptr, scale_ptr, zero_ptr, cols, col_ok, stride_qn, stride_sn, stride_zn, k0, k_end, word_in_tile,
                K, G: tl.constexpr, BK: tl.constexpr):
    """The tile's word indices (BK / 8,), its packed words (BN, BK / 8), each loaded once, and their group
    scale and zero point (see _group_scale_zero)."""
    word = k0 // 8 + word_in_tile
    words = tl.load(qw_ptr + cols.to(tl.int64)[:, None] * stride_qn + word[None, :],
                    mask=col_ok[:, None] & (word * 8 < k_end)[None, :], other=0)
    scale, zero = _group_scale_zero(scale_ptr, zero_ptr, cols, col_ok, stride_sn, stride_zn, k0, word_in_tile, K, G, BK)
    return word, words, scale, zero


@triton.jit
def _store(out_ptr, bias_ptr, acc, split, rows, cols, M, N, stride_os, stride_om,
           HAS_BIAS: tl.constexpr, PARTIAL: tl.constexpr):
    """acc (BM, BN) fp32: a partial sum (split-K), or the result with its bias in out's dtype."""
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    if PARTIAL:
        tl.store(out_ptr + split * stride_os + rows.to(tl.int64)[:, None] * stride_om + cols[None, :], acc, mask=mask)
    else:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
        out = out_ptr + rows.to(tl.int64)[:, None] * stride_om + cols[None, :]
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["M"])
def _w4a16_gemm_kernel(x_ptr, qw_ptr, scale_ptr, zero_ptr, bias_ptr, out_ptr, M, N, K, k_per_split,
                       stride_xm, stride_qn, stride_sn, stride_zn, stride_os, stride_om,
                       G: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                       HAS_BIAS: tl.constexpr, PARTIAL: tl.constexpr):
    pid_m, pid_n, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rows = pid_m * BM + tl.arange(0, BM)
    cols = pid_n * BN + tl.arange(0, BN)
    col_ok = cols < N
    word_in_tile = tl.arange(0, BK // 8)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    k_begin = split * k_per_split
    k_end = tl.minimum(k_begin + k_per_split, K)
    for k0 in range(k_begin, k_end, BK):
        word, words, scale, zero = _tile_words(qw_ptr, scale_ptr, zero_ptr, cols, col_ok, stride_qn, stride_sn,
                                               stride_zn, k0, k_end, word_in_tile, K, G, BK)
        tile = tl.zeros((BM, BN), dtype=tl.float32)
        for j in tl.static_range(8):
            kk = word * 8 + j
            a = tl.load(x_ptr + rows.to(tl.int64)[:, None] * stride_xm + kk[None, :],
                        mask=(rows[:, None] < M) & (kk < k_end)[None, :], other=0.0)  # (BM, BK / 8)
            codes = (words >> (4 * j)) & 0xF
            if G % BK == 0:  # integers in [-15, 15]: exact in 16 bits; the scale comes after the dot
                tile = tl.dot(a, tl.trans((codes - zero[:, None]).to(a.dtype)), tile)
            else:
                tile = tl.dot(a, tl.trans(((codes - zero).to(tl.float32) * scale).to(a.dtype)), tile)
        if G % BK == 0:
            acc += tile * scale[None, :]
        else:
            acc += tile
    _store(out_ptr, bias_ptr, acc, split, rows, cols, M, N, stride_os, stride_om, HAS_BIAS, PARTIAL)


@triton.jit
def _w4a16_gemv_kernel(x_ptr, qw_ptr, scale_ptr, zero_ptr, bias_ptr, out_ptr, M, N, K, k_per_split,
                       stride_xm, stride_qn, stride_sn, stride_zn, stride_os, stride_om,
                       G: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                       HAS_BIAS: tl.constexpr, PARTIAL: tl.constexpr):
    row, pid_n, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    cols = pid_n * BN + tl.arange(0, BN)
    col_ok = cols < N
    word_in_tile = tl.arange(0, BK // 8)
    acc = tl.zeros((BN,), dtype=tl.float32)
    k_begin = split * k_per_split
    k_end = tl.minimum(k_begin + k_per_split, K)
    for k0 in range(k_begin, k_end, BK):
        word, words, scale, zero = _tile_words(qw_ptr, scale_ptr, zero_ptr, cols, col_ok, stride_qn, stride_sn,
                                               stride_zn, k0, k_end, word_in_tile, K, G, BK)
        products = tl.zeros((BN, BK // 8), dtype=tl.float32)  # (code - zero) * x, per word
        for j in tl.static_range(8):
            kk = word * 8 + j
            a = tl.load(x_ptr + row.to(tl.int64) * stride_xm + kk, mask=kk < k_end, other=0.0).to(tl.float32)
            codes = (words >> (4 * j)) & 0xF
            if G % BK == 0:
                products += (codes - zero[:, None]).to(tl.float32) * a[None, :]
            else:
                products += (codes - zero).to(tl.float32) * a[None, :]
        if G % BK == 0:
            acc += tl.sum(products, axis=1) * scale
        else:
            acc += tl.sum(products * scale, axis=1)
    rows = row + tl.arange(0, 1)
    _store(out_ptr, bias_ptr, acc[None, :], split, rows, cols, M, N, stride_os, stride_om, HAS_BIAS, PARTIAL)


def w4a16_gemm(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int,
               bias: torch.Tensor | None = None, config: W4A16Config = W4A16Config()) -> torch.Tensor:
    """x (M, K) -> (M, N) in x's dtype, W given by its INT4 codes (see the module docstring)."""
    m, k = x.shape
    n = qweight.shape[0]
    _check(x, qweight, scales, zeros, group_size, config, k, n)
    split = config.split_k
    k_per_split = triton.cdiv(triton.cdiv(k, config.block_k), split) * config.block_k
    partial = split > 1
    out = torch.empty((split, m, n) if partial else (m, n), dtype=torch.float32 if partial else x.dtype,
                      device=x.device)
    gemv = config.block_m == 1
    grid = (m if gemv else triton.cdiv(m, config.block_m), triton.cdiv(n, config.block_n), split)
    common = dict(G=group_size, BN=config.block_n, BK=config.block_k, HAS_BIAS=bias is not None and not partial,
                  PARTIAL=partial, num_warps=config.num_warps, num_stages=config.num_stages)
    args = (x, qweight, scales, zeros, bias if bias is not None else x, out, m, n, k, k_per_split, x.stride(0),
            qweight.stride(0), scales.stride(0), zeros.stride(0), out.stride(0) if partial else 0, out.stride(-2))
    if gemv:
        _w4a16_gemv_kernel[grid](*args, **common)
    else:
        _w4a16_gemm_kernel[grid](*args, BM=config.block_m, **common)
    if not partial:
        return out
    total = out.sum(dim=0)
    if bias is not None:
        total += bias.float()
    return total.to(x.dtype)


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
    if group_size % 8:
        raise ValueError(f"group size {group_size} must be a multiple of 8: a packed word lies in one group")
    smallest = 64 if config.block_m == 1 else 128
    if config.block_k < smallest or config.block_k & (config.block_k - 1):
        raise ValueError(f"block_k {config.block_k} must be a power of two >= {smallest} for block_m "
                         f"{config.block_m}: a tile's nibble planes are block_k / 8 columns"
                         + (", and tl.dot needs at least 16" if config.block_m > 1 else ""))
    if config.block_m != 1 and config.block_m < 16:
        raise ValueError(f"block_m {config.block_m} must be 1 (GEMV) or >= 16 (tl.dot)")
    for name, t in (("x", x), ("qweight", qweight), ("scales", scales), ("zeros", zeros)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name}: the last dimension must be contiguous")
    check_same_device(x=x, qweight=qweight, scales=scales, zeros=zeros)
