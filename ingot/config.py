"""Frozen configuration records.

ModelConfig says what the network is (read once from a checkpoint's config.json, in any of
the spellings transformers 4.x and 5.x write); BuildConfig says what an engine is specialised
for. Both validate at construction and name the offending field, its limit and the fix.
Derived values are properties. Nothing here imports the runtime.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ingot.errors import ConfigError

DTYPES = ("fp32", "fp16", "bf16")
DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
_TORCH_DTYPE_NAMES = {
    "float32": "fp32", "float": "fp32", "fp32": "fp32",
    "float16": "fp16", "half": "fp16", "fp16": "fp16",
    "bfloat16": "bf16", "bf16": "bf16",
}
ROPE_TYPES = ("default", "linear", "llama3")


def normalize_dtype(name: str, *, field_name: str = "dtype") -> str:
    """'bfloat16' / 'torch.bfloat16' / 'bf16' -> 'bf16'."""
    key = str(name).removeprefix("torch.").lower()
    if key not in _TORCH_DTYPE_NAMES:
        raise ConfigError(f"{field_name}={name!r} is not a supported dtype; use one of {', '.join(DTYPES)}")
    return _TORCH_DTYPE_NAMES[key]


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True)
class ModelConfig:
    """The shape of a decoder-only transformer of the Llama family."""

    architecture: str  # the HF architecture name, e.g. "LlamaForCausalLM"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # {"rope_type": "llama3", "factor": 8.0, ...}
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2, or Llama with attention_bias
    o_bias: bool = False  # Llama with attention_bias
    mlp_bias: bool = False
    qk_norm: bool = False  # Qwen3: RMSNorm over each head of q and k before rotary
    sliding_window: int | None = None  # Mistral v0.1: attend to at most this many past tokens
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    checkpoint_dtype: str = "fp32"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers",
                     "num_heads", "num_kv_heads", "head_dim", "max_position_embeddings"):
            _require(getattr(self, name) > 0, f"model config: {name}={getattr(self, name)} must be > 0")
        _require(self.num_heads % self.num_kv_heads == 0,
                 f"model config: num_attention_heads={self.num_heads} must be a multiple of "
                 f"num_key_value_heads={self.num_kv_heads}")
        _require(self.head_dim % 2 == 0, f"model config: head_dim={self.head_dim} must be even for rotary")
        rope_type = (self.rope_scaling or {}).get("rope_type", "default")
        _require(rope_type in ROPE_TYPES,
                 f"model config: rope_scaling.rope_type={rope_type!r} is not supported; "
                 f"supported: {', '.join(ROPE_TYPES)}")

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def num_params(self) -> int:
        attn = self.hidden_size * (self.q_size + 2 * self.kv_size) + self.q_size * self.hidden_size
        mlp = 3 * self.hidden_size * self.intermediate_size
        embed = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * (attn + mlp + 2 * self.hidden_size) + embed + self.hidden_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        data = dict(data)
        data["eos_token_ids"] = tuple(data.get("eos_token_ids") or ())
        return cls(**data)

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> "ModelConfig":
        """Read a transformers config.json (4.x or 5.x spellings)."""
        archs = hf.get("architectures") or []
        _require(len(archs) == 1, f"config.json: 'architectures' must name one architecture, got {archs!r}")
        arch = archs[0]
        rope_theta, rope_scaling = _read_rope(hf)
        eos = hf.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
        attention_bias = bool(hf.get("attention_bias", False))
        is_qwen2 = arch == "Qwen2ForCausalLM"
        sliding = hf.get("sliding_window")
        if is_qwen2 or arch == "Qwen3ForCausalLM":
            sliding = sliding if hf.get("use_sliding_window", False) else None
        return cls(
            architecture=arch,
            **hf_shape_fields(hf),
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            qkv_bias=is_qwen2 or attention_bias,
            o_bias=attention_bias and not is_qwen2,
            mlp_bias=bool(hf.get("mlp_bias", False)),
            qk_norm=arch == "Qwen3ForCausalLM",
            sliding_window=sliding,
            bos_token_id=hf.get("bos_token_id"),
            eos_token_ids=eos_ids,
        )


def hf_shape_fields(hf: dict[str, Any], default_dtype: str = "float32") -> dict[str, Any]:
    """The size fields every decoder config.json has, in ModelConfig's names (shared with the planner)."""
    num_heads = hf["num_attention_heads"]
    return dict(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=num_heads,
        num_kv_heads=hf.get("num_key_value_heads") or num_heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // num_heads,
        max_position_embeddings=hf.get("max_position_embeddings", 4096),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        checkpoint_dtype=normalize_dtype(hf.get("dtype") or hf.get("torch_dtype") or default_dtype,
                                         field_name="config.json torch_dtype"),
    )


def _read_rope(hf: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """transformers 4.x: rope_theta + rope_scaling; 5.x: rope_parameters holding both."""
    params = hf.get("rope_parameters")
    if params:
        params = dict(params)
        theta = params.pop("rope_theta", hf.get("rope_theta", 10000.0))
        scaling = params if params.get("rope_type", params.get("type", "default")) != "default" else None
    else:
        theta = hf.get("rope_theta", 10000.0)
        scaling = dict(hf["rope_scaling"]) if hf.get("rope_scaling") else None
    if scaling is not None:
        scaling.setdefault("rope_type", scaling.pop("type", "default"))
        scaling.pop("type", None)
        if scaling["rope_type"] == "default":
            scaling = None
    return float(theta), scaling


DEFAULT_MAX_SEQ_LEN = 4096
DEFAULT_MAX_INPUT_LEN = 2048


@dataclass(frozen=True)
class BuildConfig:
    """What an engine is specialised for; frozen into engine.json.

    max_seq_len / max_input_len left as None are derived from the model at build time
    (`resolved`): min(4096, max_position_embeddings) and min(2048, max_seq_len).
    """

    dtype: str = "auto"  # auto: bf16 on CUDA (fp16 if the checkpoint is fp16), fp32 on CPU
    max_batch_size: int = 64
    max_input_len: int | None = None
    max_seq_len: int | None = None
    max_num_tokens: int = 2048
    tokens_per_block: int = 16
    # Decode batch sizes captured as CUDA graphs (a step is padded up to the nearest one);
    # None: powers of two and multiples of 32 up to max_batch_size. Unused on CPU.
    cuda_graph_batch_sizes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.cuda_graph_batch_sizes is not None:
            sizes = tuple(sorted(set(self.cuda_graph_batch_sizes)))
            _require(all(isinstance(n, int) and 0 < n <= self.max_batch_size for n in sizes),
                     f"build config: cuda_graph_batch_sizes={list(sizes)} must be in [1, max_batch_size="
                     f"{self.max_batch_size}]")
            object.__setattr__(self, "cuda_graph_batch_sizes", sizes)
        if self.dtype != "auto":
            object.__setattr__(self, "dtype", normalize_dtype(self.dtype))
        for name in ("max_batch_size", "max_input_len", "max_seq_len", "max_num_tokens", "tokens_per_block"):
            value = getattr(self, name)
            if value is None and name in ("max_input_len", "max_seq_len"):
                continue
            _require(isinstance(value, int) and value > 0,
                     f"build config: {name}={value!r} must be a positive integer")
        if self.max_input_len is not None and self.max_seq_len is not None:
            _require(self.max_input_len <= self.max_seq_len,
                     f"build config: max_input_len={self.max_input_len} must be <= max_seq_len={self.max_seq_len}")
        _require(self.tokens_per_block & (self.tokens_per_block - 1) == 0,
                 f"build config: tokens_per_block={self.tokens_per_block} must be a power of two")

    def resolved(self, model: ModelConfig) -> "BuildConfig":
        """Fill the lengths left to the model; check them against what the model supports."""
        max_seq_len = self.max_seq_len or min(DEFAULT_MAX_SEQ_LEN, model.max_position_embeddings)
        _require(max_seq_len <= model.max_position_embeddings,
                 f"build config: max_seq_len={max_seq_len} exceeds the model's max_position_embeddings="
                 f"{model.max_position_embeddings}; pass --max-seq-len {model.max_position_embeddings} or less")
        max_input_len = self.max_input_len or min(DEFAULT_MAX_INPUT_LEN, max_seq_len)
        graph_sizes = self.cuda_graph_batch_sizes or default_graph_sizes(self.max_batch_size)
        return dataclasses.replace(self, max_seq_len=max_seq_len, max_input_len=max_input_len,
                                   cuda_graph_batch_sizes=graph_sizes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BuildConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        if data.get("cuda_graph_batch_sizes") is not None:
            data["cuda_graph_batch_sizes"] = tuple(data["cuda_graph_batch_sizes"])
        return cls(**data)


def default_graph_sizes(max_batch_size: int) -> tuple[int, ...]:
    """1, 2, 4, 8, 16, 32, then every 32 (a padded step wastes at most 31 rows), up to max_batch_size."""
    sizes = {n for n in (1, 2, 4, 8, 16) if n < max_batch_size}
    sizes |= set(range(32, max_batch_size, 32)) | {max_batch_size}
    return tuple(sorted(sizes))


@dataclass(frozen=True)
class CacheConfig:
    """Run-time choice of how much memory the paged KV cache takes."""

    gpu_memory_fraction: float = 0.9  # of free device memory, on CUDA
    max_cache_bytes: int | None = None  # a byte cap; on CPU the default is 1 GiB
    enable_prefix_caching: bool = True

    def __post_init__(self) -> None:
        _require(0.0 < self.gpu_memory_fraction <= 1.0,
                 f"cache config: gpu_memory_fraction={self.gpu_memory_fraction} must be in (0, 1]")
        _require(self.max_cache_bytes is None or self.max_cache_bytes > 0,
                 f"cache config: max_cache_bytes={self.max_cache_bytes} must be > 0")


@dataclass(frozen=True)
class ParallelConfig:
    """How an engine is split over GPUs; frozen into engine.json (see ingot/parallel/mapping.py).

    world size = tp * pp ranks: tp ranks split every layer (heads, MLP columns, vocabulary),
    pp stages each own a contiguous run of layers; ep ranks (a subgroup of the tp ranks) split
    the experts of a mixture-of-experts layer instead of slicing each expert.
    """

    tp: int = 1
    pp: int = 1
    ep: int = 1
    pp_layers: tuple[int, ...] | None = None  # layers per stage, first stage first; None: as even as possible

    def __post_init__(self) -> None:
        for name in ("tp", "pp", "ep"):
            value = getattr(self, name)
            _require(isinstance(value, int) and value > 0, f"parallel config: {name}={value!r} must be a positive integer")
        _require(self.tp % self.ep == 0,
                 f"parallel config: ep={self.ep} must divide tp={self.tp} (expert-parallel ranks are a subgroup "
                 "of the tensor-parallel ranks)")
        if self.pp_layers is not None:
            layers = tuple(self.pp_layers)
            _require(len(layers) == self.pp and all(isinstance(n, int) and n > 0 for n in layers),
                     f"parallel config: pp_layers={list(layers)} must give {self.pp} positive layer counts, "
                     "one per pipeline stage")
            object.__setattr__(self, "pp_layers", layers)

    @property
    def world_size(self) -> int:
        return self.tp * self.pp

    def to_dict(self) -> dict[str, Any]:
        return {"tp": self.tp, "pp": self.pp, "ep": self.ep,
                "pp_layers": list(self.pp_layers) if self.pp_layers else None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ParallelConfig":
        layers = data.get("pp_layers")
        return cls(data.get("tp", 1), data.get("pp", 1), data.get("ep", 1), tuple(layers) if layers else None)


# KV cache element types; "auto" stores the cache in the model's dtype, "fp8" as E4M3 with one K and
# one V scale per layer (ingot/quantization/kv_cache.py).
KV_CACHE_DTYPES = ("auto", "fp8")
# How an fp8 KV cache's scales are set: "calibrated" = max |k| (|v|) of the layer over the calibration
# text / 448; "unit" = 1.0, for builds with no calibration text.
KV_CACHE_SCALES = ("calibrated", "unit")
KV_ELEMENT_BYTES = {**DTYPE_BYTES, "fp8": 1}


def kv_cache_element(kv_cache_dtype: str, dtype: str) -> str:
    """The element type the KV cache stores: "fp8", or the engine's dtype under "auto"."""
    return dtype if kv_cache_dtype == "auto" else kv_cache_dtype


@dataclass(frozen=True)
class QuantConfig:
    """How the weights of the linear layers (and the KV cache) are stored; frozen into engine.json.

    `method` names a quantization scheme of ingot/quantization (the registry there lists them);
    `params` are that scheme's own settings (group size, scaling granularity, calibration set).
    """

    method: str = "none"
    params: dict[str, Any] = field(default_factory=dict)
    kv_cache_dtype: str = "auto"
    kv_cache_scales: str = "calibrated"  # fp8 KV cache only: see KV_CACHE_SCALES
    # fp8 KV cache with calibrated scales: what they were calibrated on (CalibrationSet.describe()),
    # filled by the builder; the scales themselves are engine tensors, layers.{i}.self_attn.kv_scale
    kv_cache_calibration: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        from ingot.quantization.registry import method_names  # a name list; imports no torch

        _require(self.method in method_names(),
                 f"quant config: method={self.method!r} is unknown; ingot builds: {', '.join(method_names())}")
        _require(self.kv_cache_dtype in KV_CACHE_DTYPES,
                 f"quant config: kv_cache_dtype={self.kv_cache_dtype!r} is not supported; "
                 f"use one of {', '.join(KV_CACHE_DTYPES)}")
        _require(self.kv_cache_scales in KV_CACHE_SCALES,
                 f"quant config: kv_cache_scales={self.kv_cache_scales!r} is not supported; "
                 f"use one of {', '.join(KV_CACHE_SCALES)}")
        _require(isinstance(self.params, dict), f"quant config: params={self.params!r} must be a JSON object")

    @property
    def kv_cache_fp8(self) -> bool:
        return self.kv_cache_dtype == "fp8"

    @property
    def kv_cache_calibrates(self) -> bool:
        """The build must calibrate the KV cache's scales on a text."""
        return self.kv_cache_fp8 and self.kv_cache_scales == "calibrated"

    def to_dict(self) -> dict[str, Any]:
        data = {"method": self.method, "params": dict(self.params), "kv_cache_dtype": self.kv_cache_dtype}
        if self.kv_cache_fp8:
            data.update(kv_cache_scales=self.kv_cache_scales, kv_cache_calibration=self.kv_cache_calibration)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "QuantConfig":
        return cls(data.get("method", "none"), dict(data.get("params") or {}), data.get("kv_cache_dtype", "auto"),
                   data.get("kv_cache_scales", "calibrated"), data.get("kv_cache_calibration"))


SPECULATIVE_MODES = ("ngram", "draft_target")


@dataclass(frozen=True)
class SpeculativeConfig:
    """Speculative decoding, frozen into engine.json: a proposer suggests up to max_draft_len tokens
    per decoding request and the target model verifies them in one step (ingot/speculative/)."""

    mode: str | None = None  # None: off; "ngram": prompt lookup; "draft_target": a draft engine (given at run time)
    max_draft_len: int = 4
    ngram_min: int = 2  # ngram: the shortest suffix that may be matched
    ngram_max: int = 4  # and the longest (tried first)
    # Speculate only while at most this many requests run: verifying drafts costs compute that a
    # large batch no longer has spare (a stated threshold, not measured per engine).
    max_batch: int = 32

    def __post_init__(self) -> None:
        _require(self.mode is None or self.mode in SPECULATIVE_MODES,
                 f"speculative config: mode={self.mode!r} is unknown; use one of {', '.join(SPECULATIVE_MODES)}")
        _require(1 <= self.max_draft_len <= 7,
                 f"speculative config: max_draft_len={self.max_draft_len} must be in [1, 7] (a verify step of "
                 "1 + drafts tokens per sequence runs in the decode kernel, which takes up to 8)")
        _require(1 <= self.ngram_min <= self.ngram_max,
                 f"speculative config: ngram_min={self.ngram_min} and ngram_max={self.ngram_max} must satisfy "
                 "1 <= ngram_min <= ngram_max")
        _require(self.max_batch >= 1, f"speculative config: max_batch={self.max_batch} must be >= 1")

    @property
    def enabled(self) -> bool:
        return self.mode is not None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "SpeculativeConfig":
        return cls(**(data or {}))


CAPACITY_POLICIES = ("max_utilization", "guaranteed_no_evict")


@dataclass(frozen=True)
class SchedulerConfig:
    """Run-time scheduling choices, bounded by the engine's build envelope."""

    capacity_policy: str = "max_utilization"
    max_batch_size: int = 64  # at most the engine's max_batch_size
    max_num_tokens: int = 2048  # per step; at most the engine's max_num_tokens
    # max_utilization: how many decode steps ahead admission forecasts the running requests'
    # blocks (ingot/runtime/policies.py); None: to each one's expected finish; 0: admit whatever
    # fits now and preempt when blocks run out
    admission_lookahead: int | None = None

    def __post_init__(self) -> None:
        _require(self.capacity_policy in CAPACITY_POLICIES,
                 f"scheduler config: capacity_policy={self.capacity_policy!r} is unknown; "
                 f"use one of {', '.join(CAPACITY_POLICIES)}")
        _require(self.max_batch_size > 0, f"scheduler config: max_batch_size={self.max_batch_size} must be > 0")
        _require(self.max_num_tokens > 0, f"scheduler config: max_num_tokens={self.max_num_tokens} must be > 0")
        _require(self.admission_lookahead is None or self.admission_lookahead >= 0,
                 f"scheduler config: admission_lookahead={self.admission_lookahead} must be >= 0 (or None)")

    @classmethod
    def for_engine(cls, build: BuildConfig, capacity_policy: str = "max_utilization",
                   max_batch_size: int | None = None, max_num_tokens: int | None = None,
                   admission_lookahead: int | None = None) -> "SchedulerConfig":
        """The build's limits unless smaller ones are asked for; larger ones are an error."""
        for name, value, limit in (("max_batch_size", max_batch_size, build.max_batch_size),
                                   ("max_num_tokens", max_num_tokens, build.max_num_tokens)):
            _require(value is None or value <= limit,
                     f"scheduler config: {name}={value} exceeds the engine's {name}={limit}; "
                     f"rebuild with a larger --{name.replace('_', '-')}")
        return cls(capacity_policy, max_batch_size or build.max_batch_size, max_num_tokens or build.max_num_tokens,
                   admission_lookahead)


__all__ = ["SchedulerConfig", "CAPACITY_POLICIES", "ModelConfig", "BuildConfig", "CacheConfig", "ParallelConfig",
           "QuantConfig", "KV_CACHE_DTYPES", "KV_CACHE_SCALES", "KV_ELEMENT_BYTES", "kv_cache_element",
           "SpeculativeConfig", "SPECULATIVE_MODES", "normalize_dtype", "DTYPES", "DTYPE_BYTES"]
