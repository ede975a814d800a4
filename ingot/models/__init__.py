"""Model registry, keyed by the Hugging Face architecture name."""

from __future__ import annotations

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
