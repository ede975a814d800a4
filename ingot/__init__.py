"""ingot: build an LLM engine ahead of time, then serve it with a paged KV cache."""

from ingot.config import BuildConfig, CacheConfig, ModelConfig
from ingot.sampling_params import SamplingParams

__version__ = "0.1.0"


def __getattr__(name: str):
    # LLM pulls in torch and the runtime; import it only when asked for.
    if name == "LLM":
        from ingot.llm import LLM

        return LLM
    if name in ("RequestOutput", "CompletionOutput"):
        from ingot.runtime import outputs

        return getattr(outputs, name)
    raise AttributeError(f"module 'ingot' has no attribute {name!r}")


__all__ = ["LLM", "SamplingParams", "BuildConfig", "CacheConfig", "ModelConfig", "__version__"]
