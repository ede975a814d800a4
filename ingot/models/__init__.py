"""Model registry, keyed by the Hugging Face architecture name."""

from __future__ import annotations

import contextlib

from ingot.errors import CheckpointError

# architecture -> (module, class). Every entry of one family shares a file.
_REGISTRY = {
    "LlamaForCausalLM": ("ingot.models.llama", "LlamaForCausalLM"),
    "MistralForCausalLM": ("ingot.models.llama", "LlamaForCausalLM"),
    "Qwen2ForCausalLM": ("ingot.models.llama", "LlamaForCausalLM"),
    "Qwen3ForCausalLM": ("ingot.models.llama", "LlamaForCausalLM"),
}


def supported_architectures() -> list[str]:
    return sorted(_REGISTRY)


def check_architecture(architecture: str) -> None:
    if architecture not in _REGISTRY:
        raise CheckpointError(
            f"architecture {architecture!r} is not supported; supported architectures: "
            f"{', '.join(supported_architectures())}"
        )


def model_module(architecture: str):
    """The module of the family, which provides the model class and convert_hf_weights."""
    import importlib

    check_architecture(architecture)
    return importlib.import_module(_REGISTRY[architecture][0])


def model_class(architecture: str):
    return getattr(model_module(architecture), _REGISTRY[architecture][1])


@contextlib.contextmanager
def default_dtype(dtype):
    """Create parameters in `dtype` (layers use torch's default dtype unless a method picks its own)."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def create_model(spec, backend, rank: int = 0, device="meta", max_positions: int | None = None):
    """The model of one rank of an engine (an EngineSpec), parameters in the engine's dtype on
    `device` (meta: shapes only, no memory). The builder and the loader both make models here."""
    import torch

    from ingot.engine_format import torch_dtype
    from ingot.layers.context import LayerContext
    from ingot.quantization import make_scheme

    ctx = LayerContext(spec.mapping.ranks[rank], make_scheme(spec.quant), spec.quant.kv_cache_dtype)
    with torch.device(device), default_dtype(torch_dtype(spec.dtype)):
        return model_class(spec.model.architecture)(spec.model, backend, max_positions or spec.build.max_seq_len, ctx)
