"""The GPU table: memory, bandwidth, dense tensor-core rates and interconnect.

Figures are NVIDIA's datasheet numbers, *dense* (the datasheets' headline figures are often
with 2:4 sparsity, twice these). Memory is what nvidia-smi reports as total (MiB), which is
what an engine can be given, not the marketing GB. GeForce cards (RTX 4090) run bf16/fp16
with fp32 accumulation at half their fp16-accumulate rate; the table holds the fp32-accumulate
rate, the one inference kernels use. Blackwell figures are the B200 (HGX, 1000 W) and the
GB200 NVL72 per-GPU figures.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ingot.errors import ConfigError

# Tensor-core formats a precision's matmul can run in, lowest to highest precision.
COMPUTE_FORMATS = ("fp4", "int8", "fp8", "fp16", "bf16")


@dataclass(frozen=True)
class GPU:
    key: str
    name: str
    arch: str  # "ampere" | "ada" | "hopper" | "blackwell"
    sm: int  # compute capability * 10: 80, 89, 90, 100
    memory_mib: int  # total, as nvidia-smi reports it
    bandwidth_gbs: float  # HBM/GDDR bandwidth, GB/s (1e9 bytes/s)
    tflops: dict[str, float]  # dense tensor-core rate per format (TOPS for int8); absent = unsupported
    link: str  # "nvlink" or "pcie": how GPUs of one box talk
    link_gbs: float  # per GPU, GB/s, both directions together (the datasheet convention)
    nvlink_domain: int = 8  # GPUs one fast fabric joins: HGX NVLink 8, GB200 NVL72 72, a PCIe box 8
    device_patterns: tuple[str, ...] = field(default=())  # regexes on torch's device name

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * 2**20

    @property
    def formats(self) -> tuple[str, ...]:
        return tuple(f for f in COMPUTE_FORMATS if f in self.tflops)

    def supports(self, fmt: str) -> bool:
        return fmt in self.tflops

    def to_dict(self) -> dict:
        return {"key": self.key, "name": self.name, "arch": self.arch, "sm": self.sm,
                "memory_gb": round(self.memory_bytes / 1e9, 1), "bandwidth_gbs": self.bandwidth_gbs,
                "tflops_dense": dict(self.tflops), "formats": list(self.formats),
                "link": self.link, "link_gbs": self.link_gbs, "nvlink_domain": self.nvlink_domain}


_AMPERE = {"bf16": 312.0, "fp16": 312.0, "int8": 624.0}
_HOPPER_SXM = {"bf16": 989.4, "fp16": 989.4, "fp8": 1978.9, "int8": 1978.9}

_GPUS: tuple[GPU, ...] = (
    GPU("a100-40gb", "A100 SXM 40GB", "ampere", 80, 40960, 1555.0, _AMPERE, "nvlink", 600.0,
        device_patterns=(r"A100.*40GB",)),
    GPU("a100-80gb", "A100 SXM 80GB", "ampere", 80, 81920, 2039.0, _AMPERE, "nvlink", 600.0,
        device_patterns=(r"A100.*80GB",)),
    GPU("l40s", "L40S 48GB", "ada", 89, 46068, 864.0,
        {"bf16": 362.05, "fp16": 362.05, "fp8": 733.0, "int8": 733.0}, "pcie", 64.0,
        device_patterns=(r"L40S",)),
    GPU("rtx-4090", "GeForce RTX 4090 24GB", "ada", 89, 24564, 1008.0,
        {"bf16": 165.2, "fp16": 165.2, "fp8": 330.3, "int8": 660.6}, "pcie", 64.0,
        device_patterns=(r"RTX 4090",)),
    GPU("h100-sxm", "H100 SXM 80GB", "hopper", 90, 81559, 3350.0, _HOPPER_SXM, "nvlink", 900.0,
        device_patterns=(r"H100 80GB HBM3", r"H100.*SXM")),
    GPU("h100-pcie", "H100 PCIe 80GB", "hopper", 90, 81559, 2000.0,
        {"bf16": 756.5, "fp16": 756.5, "fp8": 1513.0, "int8": 1513.0}, "pcie", 128.0,
        device_patterns=(r"H100 PCIe",)),
    GPU("h200", "H200 SXM 141GB", "hopper", 90, 143771, 4800.0, _HOPPER_SXM, "nvlink", 900.0,
        device_patterns=(r"H200",)),
    GPU("b200", "B200 SXM 180GB", "blackwell", 100, 183359, 8000.0,
        {"bf16": 2250.0, "fp16": 2250.0, "fp8": 4500.0, "int8": 4500.0, "fp4": 9000.0}, "nvlink", 1800.0,
        device_patterns=(r"(?<!G)B200",)),
    GPU("gb200", "GB200 NVL72 (per GPU)", "blackwell", 100, 189471, 8000.0,
        {"bf16": 2500.0, "fp16": 2500.0, "fp8": 5000.0, "int8": 5000.0, "fp4": 10000.0}, "nvlink", 1800.0,
        nvlink_domain=72, device_patterns=(r"GB200",)),
)
GPUS: dict[str, GPU] = {gpu.key: gpu for gpu in _GPUS}

ALIASES: dict[str, str] = {
    "h100": "h100-sxm", "h100-80gb": "h100-sxm", "a100": "a100-80gb", "a100-40": "a100-40gb",
    "a100-80": "a100-80gb", "4090": "rtx-4090", "rtx4090": "rtx-4090", "h200-sxm": "h200",
    "b200-sxm": "b200",
}


def gpu_names() -> list[str]:
    return list(GPUS)


def resolve_gpu(spec: str) -> GPU:
    key = spec.strip().lower().replace("_", "-").replace(" ", "-")
    key = ALIASES.get(key, key)
    if key not in GPUS:
        raise ConfigError(f"unknown GPU {spec!r}: choose one of {', '.join(GPUS)} "
                          f"(aliases: {', '.join(ALIASES)})")
    return GPUS[key]


def gpu_from_device_name(device: str) -> GPU | None:
    """torch.cuda.get_device_name() (as bench/results record it) -> table row, or None."""
    for gpu in _GPUS:
        if any(re.search(p, device, re.IGNORECASE) for p in gpu.device_patterns):
            return gpu
    return None
