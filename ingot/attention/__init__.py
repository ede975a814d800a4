"""Attention backends, chosen by name."""

from __future__ import annotations

from ingot.attention.base import AttentionBackend
from ingot.attention.metadata import AttentionMetadata


def get_backend(name: str = "torch") -> AttentionBackend:
    if name == "torch":
        from ingot.attention.torch_ref import TorchAttentionBackend

        return TorchAttentionBackend()
    raise ValueError(f"attention backend {name!r} is unknown; available: torch")


__all__ = ["AttentionBackend", "AttentionMetadata", "get_backend"]
