"""Quantization schemes by name: the one list `ingot build` and engine.json draw from.

Each entry names the module and class of a scheme (ingot/quantization/base.py). This module
imports nothing heavy, so config validation and the planner can read the names.
A new precision is a new file under ingot/quantization/ and one line here.
"""

from __future__ import annotations

import importlib

_SCHEMES = {
    "none": ("ingot.quantization.unquantized", "Unquantized"),
    "int4_rtn": ("ingot.quantization.int4", "Int4Rtn"),
    "int4_awq": ("ingot.quantization.int4", "Int4Awq"),
    "int4_gptq": ("ingot.quantization.int4", "Int4Gptq"),
    "fp8": ("ingot.quantization.fp8", "Fp8"),
    # set by the builder for a checkpoint quantized elsewhere; not a --quant choice
    "int4_checkpoint": ("ingot.quantization.int4", "Int4Checkpoint"),
}


def method_names() -> tuple[str, ...]:
    return tuple(_SCHEMES)


def build_choices() -> tuple[str, ...]:
    """What `ingot build --quant` offers: every method but the one checkpoints bring with them."""
    return tuple(name for name in _SCHEMES if name != "int4_checkpoint")


def scheme_class(method: str):
    """The QuantScheme subclass registered under `method` (validated by QuantConfig)."""
    module, name = _SCHEMES[method]
    return getattr(importlib.import_module(module), name)
