"""Precisions: one file per quantization scheme, chosen by name (see registry.py, base.py)."""

from __future__ import annotations

from ingot.config import QuantConfig
from ingot.quantization.base import LinearMethod, QuantScheme, mark_dims
from ingot.quantization.registry import method_names, scheme_class


def make_scheme(config: QuantConfig | None = None) -> QuantScheme:
    """The scheme object of a (validated) QuantConfig; none when config is None."""
    config = config or QuantConfig()
    return scheme_class(config.method)(config.params)


__all__ = ["LinearMethod", "QuantScheme", "make_scheme", "mark_dims", "method_names"]
