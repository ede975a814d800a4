"""Precisions: one file per quantization scheme, chosen by name (see registry.py, base.py).

This package's own import stays light (no torch): the CLI's argument parser and the planner read
the method names; the schemes and their torch code load when a scheme is made.
"""

from __future__ import annotations

from ingot.quantization.registry import method_names, scheme_class


def make_scheme(config=None):
    """The scheme object (QuantScheme) of a validated QuantConfig; `none` when config is None."""
    from ingot.config import QuantConfig

    config = config or QuantConfig()
    return scheme_class(config.method)(config.params)


__all__ = ["make_scheme", "method_names", "scheme_class"]
