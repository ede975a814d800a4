"""The GPU and precision tables: what each card's tensor cores run, and torch's device names."""

from __future__ import annotations

import pytest

from ingot.plan.gpus import GPUS, gpu_from_device_name, resolve_gpu
from ingot.plan.precisions import PRECISIONS


@pytest.mark.parametrize("device, key", [
    ("NVIDIA H100 80GB HBM3", "h100-sxm"), ("NVIDIA H100 PCIe", "h100-pcie"), ("NVIDIA H200", "h200"),
    ("NVIDIA A100-SXM4-80GB", "a100-80gb"), ("NVIDIA A100-SXM4-40GB", "a100-40gb"),
    ("NVIDIA L40S", "l40s"), ("NVIDIA GeForce RTX 4090", "rtx-4090"), ("NVIDIA B200", "b200"),
    ("NVIDIA GB200", "gb200"),
])
def test_torch_device_names(device, key):
    assert gpu_from_device_name(device).key == key


def test_unknown_device_is_none():
    assert gpu_from_device_name("cpu") is None and gpu_from_device_name("Tesla V100-SXM2-16GB") is None


def test_formats_follow_the_architecture():
    for gpu in GPUS.values():
        assert {"bf16", "fp16", "int8"} <= set(gpu.formats)
        assert ("fp8" in gpu.formats) == (gpu.sm >= 89), gpu.key
        assert ("fp4" in gpu.formats) == (gpu.sm >= 100), gpu.key
        # dense rates: fp8 and int8 twice bf16 where present, fp4 twice fp8
        for fmt, factor in (("fp8", 2), ("int8", 2)):
            if fmt in gpu.tflops:
                assert gpu.tflops[fmt] == pytest.approx(factor * gpu.tflops["bf16"], rel=0.02) \
                    or gpu.key == "rtx-4090", (gpu.key, fmt)


def test_h100_sxm_row():
    h100 = resolve_gpu("h100")
    assert (h100.bandwidth_gbs, h100.tflops["bf16"], h100.tflops["fp8"], h100.link_gbs) == (3350, 989.4, 1978.9, 900)
    assert 85e9 < h100.memory_bytes < 86e9  # 81,559 MiB: the "80 GB" nvidia-smi reports


def test_precision_bytes():
    assert PRECISIONS["bf16"].weight_bytes == 2 and PRECISIONS["fp8"].weight_bytes == 1
    # 4 bits + a bf16 scale (2 bytes) and a uint8 zero point (1 byte) per group of 128: ingot's INT4 layout
    assert PRECISIONS["int4_awq"].weight_bytes == PRECISIONS["int4_gptq"].weight_bytes == 0.5 + 3 / 128 == 0.5234375
    assert PRECISIONS["nvfp4"].weight_bytes == 0.5625  # 4 bits + fp8 scale per 16
    assert PRECISIONS["mxfp4"].weight_bytes == 0.53125  # 4 bits + E8M0 scale per 32
