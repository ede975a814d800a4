"""out = x @ w.T (+ bias) for decode steps of 1 to 4 tokens: a weight stream without tensor cores.

At one token a linear layer is a matrix-vector product: each weight is read once and used once,
so the kernel's only job is to keep enough bytes in flight to run at the card's copy speed.
tl.dot needs 16 rows (15 of 16 padding at M = 1) and split-K GEMVs need a second reduce kernel;
this kernel instead gives each program BN whole output columns and walks K in BK-wide strips:

    acc[m, n, k] += x[m, k0 + k] * w[n, k0 + k]      (fp32, BM x BN x BK per program)
    out[m, n]     = sum_k acc[m, n, k] (+ bias[n])   (one reduction, after the loop)

BM is M rounded up to a power of two (<= 4); the weight strip is loaded once for all M rows.
A config is (BN, BK, num_warps, num_stages); its tactic name is "gemv:BNxBK:wW:sS".

At one token the small kernels around a GEMV cost about as much as their launches; SiLU·mul
folds into the down_proj GEMV's prologue (gemv_silu_mul, used through ingot/layers/fused.py),
rounding as the separate kernel does, so fused equals unfused.

gemv_fp8 streams E4M3 weights (half the bytes of bf16) against an E4M3 activation, with the
scales applied after the reduction as gemm_fp8 applies them (ingot/kernels/gemm.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ingot.kernels._checks import check_fp8_operands, check_linear_operands, next_pow2
from ingot.kernels.gemm import scale_and_bias, scale_kind

MAX_M = 4  # above this the tiled GEMM (tensor cores) wins: the weight is reused across rows


@dataclass(frozen=True)
class GemvConfig:
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 3

    @property
    def name(self) -> str:
        return f"gemv:{self.block_n}x{self.block_k}:w{self.num_warps}:s{self.num_stages}"

    @staticmethod
    def parse(name: str) -> "GemvConfig":
        """'gemv:16x256:w4:s3' -> GemvConfig(16, 256, 4, 3), with a clear error otherwise."""
        try:
            kind, blocks, warps, stages = name.split(":")
            bn, bk = (int(b) for b in blocks.split("x"))
            assert kind == "gemv" and warps[0] == "w" and stages[0] == "s"
            config = GemvConfig(bn, bk, int(warps[1:]), int(stages[1:]))
        except (ValueError, AssertionError, IndexError):
            raise ValueError(f"tactic {name!r} is not of the form 'gemv:BNxBK:wW:sS'") from None
        if any(b < 1 or b & (b - 1) for b in (bn, bk)):
            raise ValueError(f"tactic {name!r}: block sizes must be powers of two")
        return config


@triton.jit
def _operand(x_ptr, rows, ks, k0, row_ok, k_ok, stride_xm, K, SILU_MUL: tl.constexpr):
    """(BM, BK) of the GEMV's input in x's dtype: x itself, or SiLU(gate) * up over [gate | up]
    rows of 2K, rounded as ingot/kernels/activation.py rounds it."""
    at = x_ptr + rows[:, None] * stride_xm + (k0 + ks)[None, :]
    mask = row_ok[:, None] & k_ok[None, :]
    if SILU_MUL:
        gate = tl.load(at, mask=mask, other=0.0)
        up = tl.load(at + K, mask=mask, other=0.0)
        g = gate.to(tl.float32)
        silu = (g / (1.0 + tl.exp(-g))).to(gate.dtype)
        return (silu.to(tl.float32) * up.to(tl.float32)).to(gate.dtype)
    return tl.load(at, mask=mask, other=0.0)


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, bias_ptr, out_ptr, xs_ptr, ws_ptr, M, N, K, stride_xm, stride_wn, stride_om,
                 BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, HAS_BIAS: tl.constexpr,
                 EVEN_K: tl.constexpr, NUM_STAGES: tl.constexpr, SILU_MUL: tl.constexpr,
                 X_SCALE: tl.constexpr = 0, W_SCALE: tl.constexpr = 0):
    cols = tl.program_id(0) * BN + tl.arange(0, BN)
    rows = tl.arange(0, BM)
    ks = tl.arange(0, BK)
    col_ok = cols < N
    row_ok = rows < M
    w_strip = w_ptr + cols.to(tl.int64)[:, None] * stride_wn + ks[None, :]  # (BN, BK)
    acc = tl.zeros((BM, BN, BK), dtype=tl.float32)
    for k0 in tl.range(0, K, BK, num_stages=NUM_STAGES):
        k_ok = (k0 + ks) < K
        if EVEN_K:
            w = tl.load(w_strip + k0, mask=col_ok[:, None], other=0.0, eviction_policy="evict_first")
        else:
            w = tl.load(w_strip + k0, mask=col_ok[:, None] & k_ok[None, :], other=0.0,
                        eviction_policy="evict_first")
        x = _operand(x_ptr, rows, ks, k0, row_ok, k_ok, stride_xm, K, SILU_MUL)
        acc += x.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :]
    out = scale_and_bias(tl.sum(acc, axis=2), rows, cols, M, N, xs_ptr, ws_ptr, bias_ptr,  # (BM, BN)
                          X_SCALE, W_SCALE, HAS_BIAS)
    dst = out_ptr + rows[:, None] * stride_om + cols[None, :]
    tl.store(dst, out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def gemv(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None,
         config: GemvConfig = GemvConfig(16, 256)) -> torch.Tensor:
    """x (..., K) @ w (N, K).T + bias (N,) -> (..., N) for at most MAX_M rows of x."""
    check_linear_operands(x, w, bias)
    return _launch(x, w, bias, config, silu_mul=False)


def gemv_silu_mul(gate_up: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None,
                  config: GemvConfig = GemvConfig(16, 256)) -> torch.Tensor:
    """silu(gate) * up @ w.T + bias over [gate | up] rows (..., 2K), w (N, K): SiLU·mul fused into
    the GEMV's prologue; equal to silu_and_mul then gemv."""
    if gate_up.shape[-1] != 2 * w.shape[-1]:
        raise ValueError(f"gate_up: last dimension {gate_up.shape[-1]} must be twice the weight's {w.shape[-1]}")
    check_linear_operands(gate_up[..., : w.shape[-1]], w, bias)
    return _launch(gate_up, w, bias, config, silu_mul=True)


def gemv_fp8(x_q: torch.Tensor, x_scale: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor,
             bias: torch.Tensor | None, out_dtype: torch.dtype, config: GemvConfig = GemvConfig(16, 512)) -> torch.Tensor:
    """x_q (M <= 4, K) @ w_q (N, K).T in E4M3 with gemm_fp8's scales and bias: (M, N) in out_dtype."""
    check_fp8_operands(x_q, x_scale, w_q, w_scale, bias)
    return _launch(x_q, w_q, bias, config, silu_mul=False, out_dtype=out_dtype, x_scale=x_scale, w_scale=w_scale)


def _launch(x, w, bias, c: GemvConfig, silu_mul: bool, out_dtype=None, x_scale=None, w_scale=None) -> torch.Tensor:
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    (m, k), n = (x2.shape[0], w.shape[1]), w.shape[0]
    if m > MAX_M:
        raise ValueError(f"gemv: x has {m} rows; this kernel takes at most {MAX_M} (use the tiled GEMM)")
    out = torch.empty((m, n), dtype=out_dtype or x.dtype, device=x.device)
    if m == 0 or n == 0:
        return out.view(*lead, n)
    grid = (triton.cdiv(n, c.block_n),)
    _gemv_kernel[grid](x2, w, bias if bias is not None else out, out, x_scale if x_scale is not None else out,
                       w_scale if w_scale is not None else out, m, n, k, x2.stride(0), w.stride(0),
                       out.stride(0), BM=next_pow2(m), BN=c.block_n, BK=c.block_k, HAS_BIAS=bias is not None,
                       EVEN_K=k % c.block_k == 0, NUM_STAGES=c.num_stages, SILU_MUL=silu_mul,
                       X_SCALE=scale_kind(x_scale), W_SCALE=scale_kind(w_scale), num_warps=c.num_warps)
    return out.view(*lead, n)
