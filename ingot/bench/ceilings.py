"""The card's ceilings, measured in the benchmark's own process right before it runs.

    copy_tbps      device-to-device copy of `copy_bytes` (2 GiB on a GPU; less beside a server that
                   holds the memory, never under 256 MiB): (read + written bytes) / time, best of
                   `repeats` after warm-up
    matmul_tflops  an n x n x n matmul (8192 on a GPU) in the engine's dtype: 2 n^3 / time, best of
                   `repeats` after warm-up
    matmul_fp8_tflops  the same in E4M3 through torch._scaled_mm (cuBLASLt, per-tensor scales, bf16
                   out), for engines whose GEMMs run in FP8 (on a GPU with FP8 tensor cores only)

On the CPU the sizes are smaller (a 2 GiB copy and an 8192^3 matmul take seconds per repeat there)
and each record says which sizes it used.
"""

from __future__ import annotations

import time

GPU_COPY_BYTES, MIN_GPU_COPY_BYTES, CPU_COPY_BYTES = 2 << 30, 256 << 20, 256 << 20
GPU_MATMUL_N, CPU_MATMUL_N = 8192, 1024


def measure_ceilings(device: str, dtype: str, repeats: int = 10, fp8: bool = False) -> dict:
    import torch

    from ingot.engine_format import torch_dtype

    on_gpu = device.startswith("cuda")
    copy_bytes = _gpu_copy_bytes(device) if on_gpu else CPU_COPY_BYTES
    n = GPU_MATMUL_N if on_gpu else CPU_MATMUL_N
    copy_s = _copy_seconds(copy_bytes, device, repeats)
    matmul_s = _matmul_seconds(n, torch_dtype(dtype), device, repeats)
    result = {"copy_tbps": round(2 * copy_bytes / copy_s / 1e12, 4), "copy_bytes": copy_bytes,
              "matmul_tflops": round(2 * n**3 / matmul_s / 1e12, 4), "matmul_n": n, "matmul_dtype": dtype}
    if fp8 and on_gpu and torch.cuda.get_device_capability(torch.device(device)) >= (8, 9):
        result["matmul_fp8_tflops"] = round(2 * n**3 / _fp8_matmul_seconds(n, device, repeats) / 1e12, 4)
    if on_gpu:
        torch.cuda.empty_cache()
    return result


def _gpu_copy_bytes(device: str) -> int:
    """2 GiB, halved while the source and destination would not fit in 80% of the free memory (a
    client beside a running server shares the card): never below 256 MiB, still far past every
    cache. The record says which size it used."""
    import torch

    free, _ = torch.cuda.mem_get_info(torch.device(device))
    size = GPU_COPY_BYTES
    while size > MIN_GPU_COPY_BYTES and 2 * size > 0.8 * free:
        size //= 2
    return size


def _copy_seconds(num_bytes: int, device: str, repeats: int) -> float:
    import torch

    src = torch.empty(num_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return _best_seconds(lambda: dst.copy_(src), device, repeats)


def _matmul_seconds(n: int, dtype, device: str, repeats: int) -> float:
    import torch

    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    return _best_seconds(lambda: a @ b, device, repeats)


def _fp8_matmul_seconds(n: int, device: str, repeats: int) -> float:
    import torch

    a = torch.randn(n, n, device=device).to(torch.float8_e4m3fn)
    b = torch.randn(n, n, device=device).to(torch.float8_e4m3fn).t()  # column-major, as cuBLASLt wants
    one = torch.ones((), device=device)
    return _best_seconds(lambda: torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16),
                         device, repeats)


def _best_seconds(fn, device: str, repeats: int) -> float:
    """Best of `repeats` timed calls after two warm-up calls (CUDA events on a GPU)."""
    import torch

    for _ in range(2):
        fn()
    on_gpu = device.startswith("cuda")
    if on_gpu:
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        if on_gpu:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1e3
        else:
            started = time.perf_counter()
            fn()
            seconds = time.perf_counter() - started
        best = min(best, seconds)
    return best
