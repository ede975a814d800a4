"""The device `ingot serve CHECKPOINT` builds for: GPU model and count, or the CPU."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass

from ingot.plan.gpus import GPU, gpu_from_device_name


@dataclass(frozen=True)
class Machine:
    kind: str  # "cpu" | "cuda"
    name: str  # torch's GPU name ("NVIDIA H200"), or the CPU architecture ("x86_64")
    count: int  # GPUs this process may use; 1 on CPU
    capability: str  # CUDA compute capability "9.0"; "" on CPU
    memory_bytes: int  # per GPU, or the host's RAM
    device: str  # what to pass as --device when building: "cpu", "cuda" or the "cuda:N" asked for

    @property
    def gpu(self) -> GPU | None:
        """The planner's table row for this GPU; None on CPU or for a GPU the table lacks."""
        return gpu_from_device_name(self.name) if self.kind == "cuda" else None

    @property
    def key(self) -> str:
        """The device part of the cache key: an engine is built for one GPU model and count."""
        if self.kind == "cpu":
            return f"cpu {self.name}"
        return f"{self.count} x {self.name} (sm {self.capability})"

    def describe(self) -> str:
        memory = f"{self.memory_bytes / 1e9:.1f} GB"
        return f"{self.key}, {memory} RAM" if self.kind == "cpu" else f"{self.key}, {memory} each"


def detect_machine(device: str | None = None) -> Machine:
    """device None: every GPU torch sees, else the CPU; "cpu", "cuda" (all GPUs) or "cuda:N" (that one)."""
    import torch

    from ingot.engine_format import current_device

    target = current_device(device)  # validates the name, as `ingot build --device` does
    if target.kind == "cpu":
        return Machine("cpu", platform.machine() or "cpu", 1, "", _host_memory(), "cpu")
    index = torch.device(device or "cuda").index
    props = torch.cuda.get_device_properties(index or 0)
    count = 1 if index is not None else torch.cuda.device_count()
    return Machine("cuda", props.name, count, target.capability, props.total_memory, device or "cuda")


def _host_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
