"""out = x @ w.T (+ bias): the dense GEMM behind every Linear, in configurations that the
builder times against cuBLAS (ingot/tactics).

x (M, K) and w (N, K) are row-major, the weight in nn.Linear's layout; out (M, N) has x's
dtype; products accumulate in fp32 and the bias is added before the one rounding.

Two kernels, the same math:
  _gemm_tma_kernel  Hopper path. Persistent grid (one program per multiprocessor walking the
                    tiles), grouped tile order so that the programs working at one time share
                    x rows and w columns in L2, tiles moved by tensor descriptors (TMA on sm_90,
                    zero-filled past the edges, so no masks and odd M costs nothing extra).
                    Needs 16-byte aligned bases and row strides (K and N multiples of 8 in bf16).
  _gemm_ptr_kernel  everything else (odd K or N, unaligned views): one program per tile,
                    masked pointer loads.

A config is (BM, BN, BK, num_warps, num_stages); its name "triton:BMxBNxBK:wW:sS" is the
tactic string stored in engines.

gemm_fp8 runs the same kernels on E4M3 operands (Hopper's FP8 tensor cores: tl.dot of float8
tiles, fp32 accumulation) and applies the scales in the epilogue, before the bias, where
torch._scaled_mm applies them:  out = (x_q . w_q^T) * x_scale * w_scale^T + bias,  with each
scale one number or one per row of its operand (ingot/quantization/fp8_method.py).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from ingot.kernels._checks import check_fp8_operands, check_linear_operands, interpreting, num_sms

GROUP_M = 8  # tiles of 8 row blocks walk the columns together: x stays in L2, w is read ~M/8/BM times


@dataclass(frozen=True)
class GemmConfig:
    block_m: int
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 3

    @property
    def name(self) -> str:
        return f"triton:{self.block_m}x{self.block_n}x{self.block_k}:w{self.num_warps}:s{self.num_stages}"

    @staticmethod
    def parse(name: str) -> "GemmConfig":
        """'triton:128x128x64:w8:s4' -> GemmConfig(128, 128, 64, 8, 4), with a clear error otherwise."""
        try:
            kind, blocks, warps, stages = name.split(":")
            bm, bn, bk = (int(b) for b in blocks.split("x"))
            assert kind == "triton" and warps[0] == "w" and stages[0] == "s"
            config = GemmConfig(bm, bn, bk, int(warps[1:]), int(stages[1:]))
        except (ValueError, AssertionError, IndexError):
            raise ValueError(f"tactic {name!r} is not of the form 'triton:BMxBNxBK:wW:sS'") from None
        for block in (bm, bn, bk):
            if block < 16 or block & (block - 1):
                raise ValueError(f"tactic {name!r}: block sizes must be powers of two >= 16 (tl.dot's minimum)")
        return config


@triton.jit
def _tile_coords(tile_id, num_pid_m, num_pid_n, GROUP: tl.constexpr):
    """Grouped order: GROUP row blocks sweep the column blocks together."""
    num_pid_in_group = GROUP * num_pid_n
    first_pid_m = (tile_id // num_pid_in_group) * GROUP
    group_size_m = min(num_pid_m - first_pid_m, GROUP)
    pid_m = first_pid_m + (tile_id % num_pid_in_group) % group_size_m
    pid_n = (tile_id % num_pid_in_group) // group_size_m
    return pid_m, pid_n


# M and the grid size vary with the batch: not specialised, so one compile serves every batch.
@triton.jit
def scale_and_bias(acc, rows, cols, M, N, xs_ptr, ws_ptr, bias_ptr, X_SCALE: tl.constexpr,
                    W_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr):
    """acc (BM, BN) fp32 times the operands' scales (0: none, 1: one number, 2: one per row of x
    or of w), plus the bias."""
    if X_SCALE == 1:
        acc = acc * tl.load(xs_ptr)
    if X_SCALE == 2:
        acc = acc * tl.load(xs_ptr + rows, mask=rows < M, other=0.0)[:, None]
    if W_SCALE == 1:
        acc = acc * tl.load(ws_ptr)
    if W_SCALE == 2:
        acc = acc * tl.load(ws_ptr + cols, mask=cols < N, other=0.0)[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    return acc


@triton.jit(do_not_specialize=["M", "num_programs"])
def _gemm_tma_kernel(x_desc, w_desc, out_desc, bias_ptr, xs_ptr, ws_ptr, M, N, K, num_programs,
                     BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP: tl.constexpr,
                     HAS_BIAS: tl.constexpr, X_SCALE: tl.constexpr = 0, W_SCALE: tl.constexpr = 0):
    num_pid_m = tl.cdiv(M, BM)
    num_pid_n = tl.cdiv(N, BN)
    num_tiles = num_pid_m * num_pid_n
    k_tiles = tl.cdiv(K, BK)
    # flatten=True pipelines the next tile's loads under this tile's epilogue.
    for tile_id in tl.range(tl.program_id(0), num_tiles, num_programs, flatten=True):
        pid_m, pid_n = _tile_coords(tile_id, num_pid_m, num_pid_n, GROUP)
        off_m = pid_m * BM
        off_n = pid_n * BN
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for ki in range(k_tiles):
            a = x_desc.load([off_m, ki * BK])  # (BM, BK), zeros past M and K
            b = w_desc.load([off_n, ki * BK])  # (BN, BK), zeros past N and K
            acc = tl.dot(a, b.T, acc)
        acc = scale_and_bias(acc, off_m + tl.arange(0, BM), off_n + tl.arange(0, BN), M, N, xs_ptr, ws_ptr,
                              bias_ptr, X_SCALE, W_SCALE, HAS_BIAS)
        out_desc.store([off_m, off_n], acc.to(out_desc.dtype))  # rows past M are clipped


@triton.jit(do_not_specialize=["M"])
def _gemm_ptr_kernel(x_ptr, w_ptr, out_ptr, bias_ptr, xs_ptr, ws_ptr, M, N, K, stride_xm, stride_wn, stride_om,
                     BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP: tl.constexpr,
                     HAS_BIAS: tl.constexpr, X_SCALE: tl.constexpr = 0, W_SCALE: tl.constexpr = 0):
    pid_m, pid_n = _tile_coords(tl.program_id(0), tl.cdiv(M, BM), tl.cdiv(N, BN), GROUP)
    rows = pid_m * BM + tl.arange(0, BM)
    cols = pid_n * BN + tl.arange(0, BN)
    ks = tl.arange(0, BK)
    x_tile = x_ptr + rows.to(tl.int64)[:, None] * stride_xm + ks[None, :]  # (BM, BK)
    w_tile = w_ptr + cols.to(tl.int64)[None, :] * stride_wn + ks[:, None]  # (BK, BN): w.T's tile
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        k_ok = (k0 + ks) < K
        a = tl.load(x_tile + k0, mask=(rows[:, None] < M) & k_ok[None, :], other=0.0)
        b = tl.load(w_tile + k0, mask=k_ok[:, None] & (cols[None, :] < N), other=0.0)
        acc = tl.dot(a, b, acc)
    acc = scale_and_bias(acc, rows, cols, M, N, xs_ptr, ws_ptr, bias_ptr, X_SCALE, W_SCALE, HAS_BIAS)
    out = out_ptr + rows.to(tl.int64)[:, None] * stride_om + cols[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=(rows[:, None] < M) & (cols[None, :] < N))


@functools.lru_cache(maxsize=None)
def _has_tma(device_index: int | None) -> bool:
    """Hopper (sm_90) and later copy tiles with TMA; the interpreter emulates descriptors."""
    return interpreting() or torch.cuda.get_device_capability(device_index)[0] >= 9


def _tma_ok(*tensors: torch.Tensor) -> bool:
    """Tensor descriptors need 16-byte aligned bases and row strides."""
    return _has_tma(tensors[0].device.index) and all(t.data_ptr() % 16 == 0 and (t.stride(0) * t.element_size()) % 16 == 0 for t in tensors)


def gemm(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None,
         config: GemmConfig = GemmConfig(64, 64, 64)) -> torch.Tensor:
    """x (..., K) @ w (N, K).T + bias (N,) -> (..., N), like torch.nn.functional.linear."""
    check_linear_operands(x, w, bias)
    return _run(x, w, bias, config, x.dtype)


def gemm_fp8(x_q: torch.Tensor, x_scale: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor,
             bias: torch.Tensor | None, out_dtype: torch.dtype, config: GemmConfig = GemmConfig(64, 64, 128)) -> torch.Tensor:
    """x_q (M, K) @ w_q (N, K).T in E4M3, scaled: x_scale (1,) or (M, 1), w_scale (1,) or (N, 1)
    float32; + bias (N,); (M, N) in out_dtype."""
    check_fp8_operands(x_q, x_scale, w_q, w_scale, bias)
    return _run(x_q, w_q, bias, config, out_dtype, x_scale, w_scale)


def scale_kind(scale: torch.Tensor | None) -> int:
    return 0 if scale is None else (1 if scale.numel() == 1 else 2)


def _run(x, w, bias, c: GemmConfig, out_dtype, x_scale=None, w_scale=None) -> torch.Tensor:
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if x2.shape[-1] > 1 and x2.stride(-1) != 1:  # reshape of an odd view may copy; keep rows contiguous
        x2 = x2.contiguous()
    (m, k), n = x2.shape, w.shape[0]
    out = torch.empty((m, n), dtype=out_dtype, device=x.device)
    if m == 0 or n == 0:
        return out.view(*lead, n)
    if k == 0:
        return out.zero_().add_(bias if bias is not None else 0).view(*lead, n)
    bias_arg = bias if bias is not None else out  # never read when HAS_BIAS is False
    scales = dict(xs=x_scale if x_scale is not None else out, ws=w_scale if w_scale is not None else out,
                  X_SCALE=scale_kind(x_scale), W_SCALE=scale_kind(w_scale))
    if _tma_ok(x2, w, out):
        _launch_tma(x2, w, out, bias_arg, bias is not None, c, **scales)
    else:
        grid = (triton.cdiv(m, c.block_m) * triton.cdiv(n, c.block_n),)
        _gemm_ptr_kernel[grid](x2, w, out, bias_arg, scales["xs"], scales["ws"], m, n, k, x2.stride(0), w.stride(0),
                               out.stride(0), BM=c.block_m, BN=c.block_n, BK=c.block_k, GROUP=GROUP_M,
                               HAS_BIAS=bias is not None, X_SCALE=scales["X_SCALE"], W_SCALE=scales["W_SCALE"],
                               num_warps=c.num_warps, num_stages=c.num_stages)
    return out.view(*lead, n)


def _tma_launch_args(x, w, out, bias_arg, has_bias: bool, c: GemmConfig, xs=None, ws=None, X_SCALE=0, W_SCALE=0):
    """(grid, args, kwargs) of one _gemm_tma_kernel launch; shared by gemm() and precompile()."""
    (m, k), n = x.shape, w.shape[0]
    x_desc = TensorDescriptor.from_tensor(x, [c.block_m, c.block_k])
    w_desc = TensorDescriptor.from_tensor(w, [c.block_n, c.block_k])
    out_desc = TensorDescriptor.from_tensor(out, [c.block_m, c.block_n])
    tiles = triton.cdiv(m, c.block_m) * triton.cdiv(n, c.block_n)
    # Persistent: as many programs as fit on the chip at once (4 in the interpreter, so that its
    # loop is exercised). Small decode tiles fit 2-3 per multiprocessor: with only one, 192 tiles
    # over 132 SMs would take two rounds, the second one 45% full.
    programs = min(tiles, 4 if interpreting() else num_sms(x.device.index) * _programs_per_sm(c, x.element_size()))
    args = (x_desc, w_desc, out_desc, bias_arg, out if xs is None else xs, out if ws is None else ws,
            m, n, k, programs)
    kwargs = dict(BM=c.block_m, BN=c.block_n, BK=c.block_k, GROUP=GROUP_M, HAS_BIAS=has_bias,
                  X_SCALE=X_SCALE, W_SCALE=W_SCALE, num_warps=c.num_warps, num_stages=c.num_stages)
    return (programs,), args, kwargs


def _programs_per_sm(c: GemmConfig, elem_bytes: int) -> int:
    """Programs resident per multiprocessor, bounded by shared memory (227 KB a block on sm_90):
    the pipeline's stages of x and w tiles plus the epilogue's output tile. An overestimate of
    the memory only costs balance, never correctness: the tile loop covers any grid size."""
    smem = (c.num_stages * (c.block_m + c.block_n) * c.block_k + c.block_m * c.block_n) * elem_bytes
    return max(1, min(4, (228 * 1024) // (smem + 1024)))


def _launch_tma(x, w, out, bias_arg, has_bias: bool, c: GemmConfig, **scales) -> None:
    grid, args, kwargs = _tma_launch_args(x, w, out, bias_arg, has_bias, c, **scales)
    _gemm_tma_kernel[grid](*args, **kwargs)


def precompile(configs: list[GemmConfig], w: torch.Tensor, threads: int = 8,
               fp8_scales: tuple[int, int] | None = None, out_dtype: torch.dtype = torch.bfloat16) -> None:
    """Compile the TMA kernel for each config against weights shaped like w, in parallel threads
    (Triton releases the GIL in its compiler passes and in ptxas): the builder's tuning pays for
    the compiles of several configs at once instead of one after another. Failures are left for
    the first real launch to report. An E4M3 w compiles gemm_fp8's variant, with the scale kinds
    (x's, w's: 1 one number, 2 per row) of fp8_scales."""
    if interpreting() or not _tma_ok(w):
        return
    from concurrent.futures import ThreadPoolExecutor
    from triton.runtime._async_compile import AsyncCompileMode  # Triton >= 3.5; private but stable in 3.6

    x = torch.empty((1, w.shape[1]), dtype=w.dtype, device=w.device)
    out = torch.empty((1, w.shape[0]), dtype=out_dtype if fp8_scales else w.dtype, device=w.device)
    kinds = dict(zip(("X_SCALE", "W_SCALE"), fp8_scales or (0, 0)))
    scale = torch.ones(1, dtype=torch.float32, device=w.device) if fp8_scales else out  # the pointer types gemm_fp8 passes
    with ThreadPoolExecutor(threads) as pool, AsyncCompileMode(pool, ignore_errors=True):
        for c in configs:
            grid, args, kwargs = _tma_launch_args(x, w, out, out, False, c, xs=scale, ws=scale, **kinds)
            _gemm_tma_kernel.warmup(*args, grid=grid, **kwargs)
