"""Timing one GEMM candidate on the GPU: device time, median of several reps.

Two things keep the number honest for the engine, which replays decode steps as CUDA graphs
and reads each layer's weights once per step:
  - launch cost is kept out: the reps are queued behind a device sleep longer than it takes the
    host to enqueue them, so the GPU never waits on Python between the start and end events
    (graphs remove that cost at run time). A Triton launch with tensor descriptors costs the
    host more than the GPU work of a small GEMM: without this, decode shapes timed the host;
  - weights are not served from L2: when one weight matrix fits in L2, the reps rotate over
    enough copies that each rep reads its weight from HBM, as a real layer does.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

_TARGET_MS = 20.0  # device time spent timing one candidate, warm-up aside
_MIN_REPS, _MAX_REPS = 5, 50
_SLACK = 2.0  # the sleep covers twice the measured host cost of enqueueing the reps
_MAX_REL_ERR = 1e-2  # bf16 rounding of fp32 sums lands near 1e-3; a wrong kernel lands near 1


class GemmBench:
    """Random x and weights of one GEMM shape on one device; times tactics on them."""

    def __init__(self, n: int, k: int, dtype: torch.dtype, device: torch.device | str):
        device = torch.device(device)
        copies = _copies_past_l2(device, n * k * torch.tensor([], dtype=dtype).element_size())
        scale = k ** -0.5  # keeps outputs O(1), away from bf16's overflow and underflow
        weights = [torch.randn(n, k, device=device).mul_(scale).to(dtype) for _ in range(copies)]
        self._set_up(device, weights, weights[0], dtype, k)

    def _set_up(self, device: torch.device, weights: list, dense: torch.Tensor, dtype: torch.dtype, k: int) -> None:
        """weights: what fn receives, rotated past L2; dense: the (N, K) matrix the reference multiplies."""
        props = torch.cuda.get_device_properties(device)
        self.device, self.weights, self.dense, self.dtype, self.k = device, weights, dense, dtype, k
        self._cycles_per_us = props.clock_rate / 1000 if hasattr(props, "clock_rate") else 2000.0
        self._x: torch.Tensor | None = None
        self._ref: torch.Tensor | None = None

    def set_batch(self, m: int) -> None:
        self._x = torch.randn(m, self.k, device=self.device).to(self.dtype)
        self._ref = F.linear(self._x.float(), self.dense.float())

    def time_us(self, fn: Callable) -> float:
        """Median device time of fn(x, w, None) in microseconds; ValueError if fn is wrong."""
        x, ws = self._x, self.weights
        out = fn(x, ws[0], None)  # also compiles, on the first use of a config
        err = ((out.float() - self._ref).norm() / self._ref.norm()).item()
        if not err < _MAX_REL_ERR:  # `not <` so that NaN fails too
            raise ValueError(f"wrong result: relative error {err:.3g}")
        first = self._events_us(fn, x, ws, reps=2)
        reps = int(min(_MAX_REPS, max(_MIN_REPS, _TARGET_MS * 1000 / max(first, 1.0))))
        return self._events_us(fn, x, ws, reps)

    def _events_us(self, fn, x, ws, reps: int) -> float:
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        host_us = self._host_us(fn, x, ws)
        torch.cuda.synchronize(self.device)
        torch.cuda._sleep(int((_SLACK * reps * host_us + 50.0) * self._cycles_per_us))
        for i in range(reps):
            starts[i].record()
            fn(x, ws[i % len(ws)], None)
            ends[i].record()
        torch.cuda.synchronize(self.device)
        return statistics.median(s.elapsed_time(e) * 1000.0 for s, e in zip(starts, ends))

    def _host_us(self, fn, x, ws) -> float:
        """Host time to enqueue one call with its event records (also the warm-up: caches,
        allocator, cuBLAS heuristics). The GPU runs behind, so this is the host's cost alone."""
        event = torch.cuda.Event(enable_timing=True)
        fn(x, ws[0], None)
        torch.cuda.synchronize(self.device)
        calls = max(4, len(ws))
        t0 = time.perf_counter()
        for i in range(calls):
            event.record()
            fn(x, ws[i % len(ws)], None)
            event.record()
        return (time.perf_counter() - t0) * 1e6 / calls


class Int4Bench(GemmBench):
    """GemmBench for INT4 weight-only GEMMs: each weight is (qweight, scales, zeros) in ingot's INT4
    layout (round-to-nearest codes of a random matrix), the reference its dequantized matrix."""

    def __init__(self, n: int, k: int, group_size: int, dtype: torch.dtype, device: torch.device):
        from ingot.quantization.int4_format import dequantize, round_to_nearest

        device = torch.device(device)
        packed = round_to_nearest(torch.randn(n, k, device=device).mul_(k ** -0.5).to(dtype), group_size, dtype)
        weights = [packed] + [tuple(t.clone() for t in packed) for _ in range(_copies_past_l2(device, n * k // 2) - 1)]
        self._set_up(device, weights, dequantize(*packed, k, group_size, dtype), dtype, k)


class Fp8Bench(GemmBench):
    """GemmBench for FP8 W8A8 GEMMs: each weight is (w_q, w_scale) of a random matrix quantized as
    the engine's are, x is (x_q, x_scale); the reference multiplies their dequantized values."""

    def __init__(self, n: int, k: int, per_channel: bool, dtype: torch.dtype, device: torch.device):
        from ingot.quantization.fp8_format import quantize_per_row, quantize_per_tensor

        device = torch.device(device)
        self.per_channel = per_channel
        quantize = quantize_per_row if per_channel else quantize_per_tensor
        w_q, w_scale = quantize(torch.randn(n, k, device=device).mul_(k ** -0.5))
        weights = [(w_q, w_scale)] + [(w_q.clone(), w_scale.clone()) for _ in range(_copies_past_l2(device, n * k) - 1)]
        self._set_up(device, weights, w_q.float() * w_scale.reshape(-1, 1), dtype, k)

    def set_batch(self, m: int) -> None:
        from ingot.quantization.fp8_format import quantize_per_row, quantize_per_tensor

        x = torch.randn(m, self.k, device=self.device).to(self.dtype)
        self._x = quantize_per_row(x) if self.per_channel else quantize_per_tensor(x)
        x_q, x_scale = self._x
        self._ref = F.linear(x_q.float() * x_scale.reshape(-1, 1), self.dense)


def _copies_past_l2(device: torch.device, weight_bytes: int) -> int:
    """Copies of a weight to rotate over so that each rep reads its weight from HBM, not L2."""
    return min(8, max(1, math.ceil(3 * torch.cuda.get_device_properties(device).L2_cache_size / weight_bytes)))


def int4_linear_fn(tactic: str, group_size: int) -> Callable:
    """fn(x, (qweight, scales, zeros), bias) for an INT4 tactic (ingot/tactics/int4_tuning.py)."""
    from ingot.tactics.int4_tuning import DEQUANT

    if tactic == DEQUANT:
        from ingot.quantization.int4_format import dequantize

        def dequantized(x, weight, bias=None):
            qweight, scales, zeros = weight
            return F.linear(x, dequantize(qweight, scales, zeros, x.shape[1], group_size, x.dtype), bias)
        return dequantized
    from ingot.kernels.w4a16 import W4A16Config, w4a16_gemm

    config = W4A16Config.parse(tactic)
    return lambda x, weight, bias=None: w4a16_gemm(x, *weight, group_size, bias, config)
