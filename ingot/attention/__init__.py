"""Attention backends, chosen by name."""

from __future__ import annotations

from ingot.attention.base import AttentionBackend, GraphBuffers, PaddingRow
from ingot.attention.metadata import AttentionMetadata


def get_backend(name: str = "torch") -> AttentionBackend:
    if name == "torch":
        from ingot.attention.torch_ref import TorchAttentionBackend

        return TorchAttentionBackend()
    if name == "triton":
        from ingot.attention.triton_backend import TritonAttentionBackend

        return TritonAttentionBackend()
    raise ValueError(f"attention backend {name!r} is unknown; available: torch, triton")


__all__ = ["AttentionBackend", "AttentionMetadata", "GraphBuffers", "PaddingRow", "get_backend"]
