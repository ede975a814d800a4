"""Weights made at load for an engine built with --dummy-weights at_load: it stores no weight
file, only the seed (engine.json's dummy_seed), and the loader generates this rank's tensors on
the target device (ingot/random_weights.py) and quantizes them as the engine's scheme would have
at build, straight into the parameters. Schemes that calibrate on text cannot run here; the
builder refuses them with such engines."""

from __future__ import annotations

import dataclasses

import torch

from ingot.engine_format import EngineSpec, torch_dtype
from ingot.errors import EngineError


def generate_weights(model: torch.nn.Module, spec: EngineSpec, backend, rank: int, device: torch.device) -> None:
    from ingot.models import create_model
    from ingot.quantization import make_scheme
    from ingot.quantization.kv_cache import add_kv_scales
    from ingot.random_weights import random_tensors

    plain = dataclasses.replace(spec, quant=dataclasses.replace(spec.quant, method="none", params={},
                                                                kv_cache_dtype="auto"))
    shapes = {name: tuple(t.shape) for name, t in create_model(plain, backend, rank).state_dict().items()}
    params = model.state_dict()
    filled = set()
    tensors = random_tensors(shapes, torch_dtype(spec.dtype), device, seed=spec.dummy_seed + rank)
    stored = make_scheme(spec.quant).quantize(tensors)
    if spec.quant.kv_cache_fp8:  # unit scales: the builder refuses calibrated ones for weights made at load
        stored = add_kv_scales(stored, spec)
    for name, tensor in stored:
        if name not in params or params[name].shape != tensor.shape or params[name].dtype != tensor.dtype:
            raise EngineError(f"generated weight {name} {tuple(tensor.shape)} {tensor.dtype} does not fit the "
                              "model; rebuild the engine with this ingot")
        params[name].copy_(tensor)
        filled.add(name)
    missing = sorted(set(params) - filled)
    if missing:
        raise EngineError(f"generating weights left {missing[:5]} unset; rebuild the engine with this ingot")
