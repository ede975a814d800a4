"""Argument checks shared by the launchers: a wrong shape, dtype, stride or device is a clear
ValueError naming the argument, never a wrong answer or an illegal memory access.

Launchers run per layer per step, so checking must cost little host time: each launcher reduces
its tensors to Sigs (shape, strides, dtype, device: about 0.5 us each) and checks them in a
function memoised on those Sigs, so a layout seen before is accepted by one dictionary lookup.
The check helpers take tensors or Sigs alike.
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class Sig(NamedTuple):
    """What the checks read of a tensor; hashable, so checks can be memoised on it."""
    shape: tuple
    strides: tuple
    dtype: torch.dtype
    device: torch.device

    def stride(self, dim: int | None = None):
        return self.strides if dim is None else self.strides[dim]

    def dim(self) -> int:
        return len(self.shape)

    def is_contiguous(self) -> bool:
        expected = 1
        for size, stride in reversed(list(zip(self.shape, self.strides))):
            if size != 1 and stride != expected:
                return False
            expected *= size
        return True


def sig(t: torch.Tensor) -> Sig:
    return Sig(t.shape, t.stride(), t.dtype, t.device)


@functools.cache
def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (tests/kernels). Read once: the mode
    is fixed when the kernels are decorated anyway."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def check_dtype(t: torch.Tensor, name: str, allowed=FLOAT_DTYPES) -> None:
    if t.dtype not in allowed:
        names = ", ".join(str(d).removeprefix("torch.") for d in allowed)
        raise ValueError(f"{name}: dtype {str(t.dtype).removeprefix('torch.')} is not supported; expected {names}")


def check_shape(t: torch.Tensor, name: str, shape: tuple) -> None:
    """shape may hold None for 'any size'."""
    ok = t.dim() == len(shape) and all(want is None or got == want for got, want in zip(t.shape, shape))
    if not ok:
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name}: shape {tuple(t.shape)} does not match {want}")


def check_last_dim_contiguous(t: torch.Tensor, name: str) -> None:
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name}: the last dimension must be contiguous (stride 1), got strides {t.stride()}")


def check_contiguous(t: torch.Tensor, name: str) -> None:
    if not t.is_contiguous():
        raise ValueError(f"{name}: must be contiguous, got shape {tuple(t.shape)} strides {t.stride()}")


def check_same_device(**tensors: torch.Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        raise ValueError("tensors are on different devices: "
                         + ", ".join(f"{n}={d}" for n, d in devices.items()))
    device = next(iter(devices.values()))
    if device.type != "cuda" and not interpreting():
        raise ValueError(f"Triton kernels need CUDA tensors (got {device}); "
                         "set TRITON_INTERPRET=1 before importing triton to run them on the CPU")


@functools.lru_cache(maxsize=None)
def num_sms(device_index: int | None) -> int:
    """Multiprocessor count: sizes the split-KV grid. A nominal 132 (H100) in the interpreter."""
    if interpreting() or not torch.cuda.is_available():
        return 132
    return torch.cuda.get_device_properties(device_index or 0).multi_processor_count


def check_linear_operands(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> None:
    """x (..., K), weight (N, K) and bias (N,) of one float dtype and device, rows contiguous: what
    the GEMM and GEMV kernels read."""
    check_dtype(x, "x")
    check_dtype(w, "weight")
    if w.dtype != x.dtype:
        raise ValueError(f"weight: dtype {w.dtype} differs from x's {x.dtype}")
    check_shape(w, "weight", (None, x.shape[-1]))
    check_last_dim_contiguous(x, "x")
    check_last_dim_contiguous(w, "weight")
    tensors = {"x": x, "weight": w}
    if bias is not None:
        check_shape(bias, "bias", (w.shape[0],))
        if bias.dtype != x.dtype or not bias.is_contiguous():
            raise ValueError(f"bias: must be contiguous {x.dtype}, got {bias.dtype} strides {bias.stride()}")
        tensors["bias"] = bias
    check_same_device(**tensors)


def check_fp8_operands(x_q: torch.Tensor, x_scale: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor,
                       bias: torch.Tensor | None) -> None:
    """An FP8 GEMM's operands: x_q (M, K) and w_q (N, K) float8_e4m3fn with rows contiguous; float32
    scales of one element or one per row ((M, 1) for x, (N, 1) for w), contiguous; bias (N,)."""
    for t, name in ((x_q, "x_q"), (w_q, "w_q")):
        check_dtype(t, name, (torch.float8_e4m3fn,))
        check_last_dim_contiguous(t, name)
    if x_q.dim() != 2:
        raise ValueError(f"x_q: want (M, K), got shape {tuple(x_q.shape)}")
    check_shape(w_q, "w_q", (None, x_q.shape[-1]))
    for scale, name, rows in ((x_scale, "x_scale", x_q.shape[0]), (w_scale, "w_scale", w_q.shape[0])):
        check_dtype(scale, name, (torch.float32,))
        if scale.numel() not in (1, rows) or not scale.is_contiguous():
            raise ValueError(f"{name}: want one contiguous float32 scale or {rows} (one per row), "
                             f"got shape {tuple(scale.shape)}")
    tensors = {"x_q": x_q, "x_scale": x_scale, "w_q": w_q, "w_scale": w_scale}
    if bias is not None:
        check_shape(bias, "bias", (w_q.shape[0],))
        tensors["bias"] = bias
    check_same_device(**tensors)
