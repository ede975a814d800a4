"""Model presets (published config.json shapes) and how `--model` is resolved.

`--model` is a preset name or alias, a config.json, a checkpoint directory holding one, or
an engine directory (engine.json: {"model": ModelConfig fields, "build": {...}}).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from ingot.config import ModelConfig
from ingot.errors import ConfigError
from ingot.plan.shapes import ModelShape


def _llama(name: str, hf_id: str, hidden: int, layers: int, heads: int, inter: int) -> ModelShape:
    """Llama 3.x: GQA with 8 KV heads of 128, vocab 128,256, untied embeddings, 128K context."""
    return ModelShape(name=name, architecture="LlamaForCausalLM", vocab_size=128256, hidden_size=hidden,
                      intermediate_size=inter, num_layers=layers, num_heads=heads, num_kv_heads=8,
                      head_dim=128, hf_id=hf_id)


_PRESETS: tuple[ModelShape, ...] = (
    _llama("llama-3.1-8b", "meta-llama/Llama-3.1-8B-Instruct", 4096, 32, 32, 14336),
    _llama("llama-3.1-70b", "meta-llama/Llama-3.1-70B-Instruct", 8192, 80, 64, 28672),
    _llama("llama-3.1-405b", "meta-llama/Llama-3.1-405B-Instruct", 16384, 126, 128, 53248),
    _llama("llama-3.3-70b", "meta-llama/Llama-3.3-70B-Instruct", 8192, 80, 64, 28672),
    ModelShape(name="mistral-7b", architecture="MistralForCausalLM", hf_id="mistralai/Mistral-7B-Instruct-v0.3",
               vocab_size=32768, hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32,
               num_kv_heads=8, head_dim=128, max_position_embeddings=32768),
    ModelShape(name="mixtral-8x7b", architecture="MixtralForCausalLM",
               hf_id="mistralai/Mixtral-8x7B-Instruct-v0.1", vocab_size=32000, hidden_size=4096,
               intermediate_size=14336, num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128,
               max_position_embeddings=32768, num_experts=8, experts_per_token=2, moe_intermediate_size=14336),
    ModelShape(name="mixtral-8x22b", architecture="MixtralForCausalLM",
               hf_id="mistralai/Mixtral-8x22B-Instruct-v0.1", vocab_size=32768, hidden_size=6144,
               intermediate_size=16384, num_layers=56, num_heads=48, num_kv_heads=8, head_dim=128,
               max_position_embeddings=65536, num_experts=8, experts_per_token=2, moe_intermediate_size=16384),
    ModelShape(name="qwen2.5-7b", architecture="Qwen2ForCausalLM", hf_id="Qwen/Qwen2.5-7B-Instruct",
               vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28, num_heads=28,
               num_kv_heads=4, head_dim=128, max_position_embeddings=32768),
    ModelShape(name="qwen2.5-72b", architecture="Qwen2ForCausalLM", hf_id="Qwen/Qwen2.5-72B-Instruct",
               vocab_size=152064, hidden_size=8192, intermediate_size=29568, num_layers=80, num_heads=64,
               num_kv_heads=8, head_dim=128, max_position_embeddings=32768),
    ModelShape(name="qwen3-30b-a3b", architecture="Qwen3MoeForCausalLM", hf_id="Qwen/Qwen3-30B-A3B",
               vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_layers=48, num_heads=32,
               num_kv_heads=4, head_dim=128, max_position_embeddings=40960,
               num_experts=128, experts_per_token=8, moe_intermediate_size=768),
    # 61 layers, the first 3 dense; 256 routed experts (8 per token) + 1 shared; MLA attention.
    # The MTP module (14B, speculative decoding only) is not counted, as in the 671B total.
    ModelShape(name="deepseek-v3", architecture="DeepseekV3ForCausalLM", hf_id="deepseek-ai/DeepSeek-V3",
               vocab_size=129280, hidden_size=7168, intermediate_size=18432, num_layers=61, num_heads=128,
               num_kv_heads=128, head_dim=128, max_position_embeddings=163840,
               num_experts=256, experts_per_token=8, moe_intermediate_size=2048, num_shared_experts=1,
               first_dense_layers=3, q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128,
               qk_rope_head_dim=64, v_head_dim=128),
)
PRESETS: dict[str, ModelShape] = {shape.name: shape for shape in _PRESETS}

# Short names people type; each maps to one preset.
ALIASES: dict[str, str] = {
    "8b": "llama-3.1-8b", "70b": "llama-3.1-70b", "405b": "llama-3.1-405b",
    "llama-8b": "llama-3.1-8b", "llama-70b": "llama-3.1-70b", "llama-405b": "llama-3.1-405b",
    "mistral": "mistral-7b", "mixtral": "mixtral-8x7b", "qwen3-moe": "qwen3-30b-a3b",
    "deepseek": "deepseek-v3", "dsv3": "deepseek-v3",
}


def _key(name: str) -> str:
    """'meta-llama/Llama-3.1-8B-Instruct' and 'Llama-3.1-8B' both become 'llama-3.1-8b'."""
    key = name.strip().lower().rsplit("/", 1)[-1].replace("_", "-")
    return key.removesuffix("-instruct")


def preset_names() -> list[str]:
    return list(PRESETS)


def resolve_model(spec: str, search_dirs: tuple[Path, ...] = ()) -> tuple[ModelShape, dict[str, Any]]:
    """A preset, config.json, checkpoint dir or engine dir -> (shape, engine build dict or {}).

    A relative path is looked up in the working directory, then in each of search_dirs.
    """
    if not spec or not spec.strip():
        raise ConfigError(f"--model is empty; choose a preset ({', '.join(PRESETS)}) or a path")
    key = _key(spec)
    key = ALIASES.get(key, key)
    if key in PRESETS and not Path(spec).exists():
        return PRESETS[key], {}
    for base in (Path.cwd(), *search_dirs):
        path = base / spec
        if path.exists():
            return _load_path(path)
    raise ConfigError(f"unknown model {spec!r}: choose a preset ({', '.join(PRESETS)}; aliases "
                      f"{', '.join(ALIASES)}) or give a path to a config.json, checkpoint or engine directory")


def _load_path(path: Path) -> tuple[ModelShape, dict[str, Any]]:
    if path.is_dir() and (path / "engine.json").is_file():
        data = _read_json(path / "engine.json")
        if not isinstance(data.get("model"), dict):
            raise ConfigError(f"{path / 'engine.json'}: no 'model' record; is this an ingot engine?")
        try:
            config = ModelConfig.from_dict(data["model"])
        except TypeError as exc:
            raise ConfigError(f"{path / 'engine.json'}: model record does not match ModelConfig: {exc}") from None
        shape = replace(ModelShape.from_model_config(config, name=path.name), checkpoint_path=_engine_source(data))
        return shape, dict(data.get("build") or {})
    config_path = path / "config.json" if path.is_dir() else path
    if not config_path.is_file():
        raise ConfigError(f"{path}: neither a config.json nor a directory with config.json or engine.json")
    name = path.name if path.is_dir() else config_path.stem
    try:
        shape = ModelShape.from_hf(_read_json(config_path), name=name)
        return replace(shape, checkpoint_path=str(path if path.is_dir() else path.parent)), {}
    except KeyError as exc:
        raise ConfigError(f"{config_path}: missing field {exc.args[0]!r}") from None


def _engine_source(engine: dict[str, Any]) -> str | None:
    """The checkpoint an engine was built from (engine.json's "source", as given to `ingot
    build`); None when it names none or the engine holds random weights (--load-format dummy)."""
    source = engine.get("source")
    return source if isinstance(source, str) and source and engine.get("load_format") != "dummy" else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return data
