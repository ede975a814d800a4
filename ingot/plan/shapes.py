"""ModelShape: the few numbers of a network the planner needs, dense, MoE or MLA alike.

ModelConfig (ingot.config) describes what ingot can build today, the Llama family, and has
no experts or latent attention; the planner also sizes Mixtral, Qwen3-MoE and DeepSeek-V3,
so it keeps this record of its own. Parameter counts follow the layer formulas below and
land within 1% of the published totals (tests/plan/test_shapes.py holds them to it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ingot.config import ModelConfig, hf_shape_fields
from ingot.errors import ConfigError
from ingot.kv_size import kv_bytes_per_token

# Keys that mark a config.json ModelConfig cannot describe (experts or latent attention).
_MOE_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")
_MLA_KEYS = ("kv_lora_rank",)


@dataclass(frozen=True)
class ModelShape:
    """A decoder-only transformer: attention (GQA or MLA) and a SwiGLU MLP (dense or MoE)."""

    name: str
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int  # the dense MLP (all layers of a dense model; first_dense_layers of MoE)
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 131072
    checkpoint_dtype: str = "bf16"
    hf_id: str | None = None  # where the checkpoint is published (Hugging Face hub id), presets only
    checkpoint_path: str | None = None  # the local checkpoint --model named: `ingot build`'s MODEL
    # Mixture of experts: every layer from first_dense_layers on routes each token to
    # experts_per_token of num_experts SwiGLU experts, plus num_shared_experts always on.
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    num_shared_experts: int = 0
    first_dense_layers: int = 0
    # Multi-head latent attention (DeepSeek-V2/V3): KV is one latent of kv_lora_rank plus a
    # shared rotary key of qk_rope_head_dim per token per layer.
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model {self.name}: {name}={getattr(self, name)} must be > 0")
        if self.is_moe and not 0 < self.experts_per_token <= self.num_experts:
            raise ConfigError(f"model {self.name}: experts_per_token={self.experts_per_token} "
                              f"must be in 1..num_experts={self.num_experts}")

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    # --- parameters, per layer -------------------------------------------------------------
    @property
    def attn_params(self) -> int:
        h = self.hidden_size
        if self.is_mla:
            qk = self.qk_nope_head_dim + self.qk_rope_head_dim
            q = (h * self.q_lora_rank + self.q_lora_rank * self.num_heads * qk if self.q_lora_rank
                 else h * self.num_heads * qk)
            kv_down = h * (self.kv_lora_rank + self.qk_rope_head_dim)
            kv_up = self.kv_lora_rank * self.num_heads * (self.qk_nope_head_dim + self.v_head_dim)
            return q + kv_down + kv_up + self.num_heads * self.v_head_dim * h
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return h * (q + 2 * kv) + q * h  # W_qkv and W_o

    @property
    def expert_params(self) -> int:
        """One SwiGLU expert: gate, up (hidden -> moe_inter) and down."""
        return 3 * self.hidden_size * self.moe_intermediate_size

    @property
    def num_moe_layers(self) -> int:
        return self.num_layers - self.first_dense_layers if self.is_moe else 0

    @property
    def embed_params(self) -> int:
        """Input embedding plus lm_head (one table when tied)."""
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    @property
    def dense_layer_params(self) -> int:
        """Attention + dense MLP + router + shared experts, summed over all layers: read every step."""
        dense_mlp = 3 * self.hidden_size * self.intermediate_size
        moe_fixed = self.num_shared_experts * self.expert_params + self.num_experts * self.hidden_size
        return (self.num_layers * self.attn_params + (self.num_layers - self.num_moe_layers) * dense_mlp
                + self.num_moe_layers * moe_fixed)

    @property
    def routed_expert_params(self) -> int:
        return self.num_moe_layers * self.num_experts * self.expert_params

    @property
    def num_params(self) -> int:
        return self.dense_layer_params + self.routed_expert_params + self.embed_params

    @property
    def active_params(self) -> int:
        """Parameters one token multiplies by: routed experts count experts_per_token times."""
        routed = self.num_moe_layers * self.experts_per_token * self.expert_params
        return self.dense_layer_params + routed + self.embed_params

    def experts_touched(self, tokens: int) -> float:
        """Expected distinct routed experts one MoE layer reads for `tokens` tokens in a step.

        With uniform routing each expert is missed by one token with probability 1 - k/E, so
        by all of them with (1 - k/E)^tokens:  E_touched = E * (1 - (1 - k/E)^tokens).
        """
        if not self.is_moe:
            return 0.0
        e, k = self.num_experts, self.experts_per_token
        return e * (1.0 - (1.0 - k / e) ** max(tokens, 0))

    # --- KV cache --------------------------------------------------------------------------
    def kv_heads_per_rank(self, tp: int) -> int:
        """KV heads one TP rank stores: split when tp divides them, else replicated (>= 1).

        MLA's latent is shared by all heads, so every TP rank keeps the whole latent.
        """
        if self.is_mla:
            return 1
        return max(1, self.num_kv_heads // tp)

    def kv_bytes_per_token(self, dtype_bytes: float, tp: int = 1, pp: int = 1) -> int:
        """Bytes of KV one token occupies on one rank holding ceil(layers / pp) layers.

        GQA: 2 (K and V) * layers * kv_heads * head_dim * bytes, the shared formula.
        MLA caches a single vector of kv_lora_rank + qk_rope_head_dim per layer, not K and V;
        passing half its width as head_dim makes the shared formula's factor 2 count it once.
        """
        layers = -(-self.num_layers // pp)
        head_dim = (self.kv_lora_rank + self.qk_rope_head_dim) / 2 if self.is_mla else self.head_dim
        return kv_bytes_per_token(layers, self.kv_heads_per_rank(tp), head_dim, dtype_bytes)

    # --- constructors ----------------------------------------------------------------------
    @classmethod
    def from_model_config(cls, config: ModelConfig, name: str | None = None) -> "ModelShape":
        return cls(
            name=name or config.architecture,
            architecture=config.architecture,
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_layers=config.num_layers,
            num_heads=config.num_heads,
            num_kv_heads=config.num_kv_heads,
            head_dim=config.head_dim,
            tie_word_embeddings=config.tie_word_embeddings,
            max_position_embeddings=config.max_position_embeddings,
            checkpoint_dtype=config.checkpoint_dtype,
        )

    @classmethod
    def from_hf(cls, hf: dict[str, Any], name: str | None = None) -> "ModelShape":
        """A transformers config.json: dense ones through ModelConfig.from_hf; MoE and MLA
        ones (which ModelConfig cannot hold) read here, field by field."""
        if not any(k in hf for k in _MOE_KEYS + _MLA_KEYS):
            return cls.from_model_config(ModelConfig.from_hf(hf), name)
        try:
            return cls(**_shape_fields(hf, name))
        except KeyError as exc:
            raise ConfigError(f"config.json: missing field {exc.args[0]!r} for a MoE/MLA model") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _shape_fields(hf: dict[str, Any], name: str | None) -> dict[str, Any]:
    """Fields of a MoE or MLA config.json, in Mixtral, Qwen3-MoE and DeepSeek-V3 spellings."""
    archs = hf.get("architectures") or ["unknown"]
    experts = next((hf[k] for k in _MOE_KEYS if hf.get(k)), 0)
    fields = hf_shape_fields(hf, default_dtype="bfloat16")
    # MLA (DeepSeek) has no head_dim: its value heads are the per-head width that matters here.
    fields["head_dim"] = hf.get("head_dim") or hf.get("v_head_dim") or fields["head_dim"]
    return dict(
        name=name or archs[0],
        architecture=archs[0],
        **fields,
        num_experts=experts,
        experts_per_token=hf.get("num_experts_per_tok", 0) if experts else 0,
        # Mixtral's experts use intermediate_size; Qwen3-MoE and DeepSeek name their own.
        moe_intermediate_size=(hf.get("moe_intermediate_size") or hf["intermediate_size"]) if experts else 0,
        num_shared_experts=hf.get("n_shared_experts") or 0,
        first_dense_layers=hf.get("first_k_dense_replace") or 0,
        q_lora_rank=hf.get("q_lora_rank") or 0,
        kv_lora_rank=hf.get("kv_lora_rank") or 0,
        qk_nope_head_dim=hf.get("qk_nope_head_dim") or 0,
        qk_rope_head_dim=hf.get("qk_rope_head_dim") or 0,
        v_head_dim=hf.get("v_head_dim") or 0,
    )
