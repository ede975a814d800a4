"""The Llama family: Llama 2/3/3.1, Mistral, Qwen2 (qkv bias) and Qwen3 (q/k RMSNorm).

One decoder layer:
    h = x + o_proj(attn(rope(q), rope(k), v)),  q,k,v = split(qkv_proj(rmsnorm(x)))
    y = h + down_proj(silu(gate) * up),          gate,up = split(gate_up_proj(rmsnorm(h)))
The residual stream is carried separately so each RMSNorm fuses the preceding add.

Engine weight names (runtime layout, fused):
    embed_tokens.weight, norm.weight, lm_head.weight (untied only),
    layers.{i}.input_layernorm.weight, layers.{i}.post_attention_layernorm.weight,
    layers.{i}.self_attn.qkv_proj.{weight,bias}   rows [q | k | v]
    layers.{i}.self_attn.o_proj.{weight,bias}
    layers.{i}.self_attn.{q_norm,k_norm}.weight   (Qwen3)
    layers.{i}.mlp.gate_up_proj.{weight,bias}     rows [gate | up]
    layers.{i}.mlp.down_proj.{weight,bias}
    layers.{i}.self_attn.kv_scale                 (2,) float32 [k_scale, v_scale]: an fp8 KV cache's
"""

from __future__ import annotations

import torch
from torch import nn

from ingot.attention import AttentionBackend, AttentionMetadata
from ingot.config import ModelConfig
from ingot.layers.context import LayerContext
from ingot.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from ingot.layers.norm import RMSNorm
from ingot.layers.rotary import RotaryEmbedding
from ingot.layers.fused import silu_mul_linear
from ingot.layers.vocab import LMHead, TiedLMHead, VocabEmbedding


class LlamaAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, rotary: RotaryEmbedding, backend: AttentionBackend,
                 ctx: LayerContext, prefix: str) -> None:
        super().__init__()
        self.qkv_proj = QKVParallelLinear(cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads,
                                          bias=cfg.qkv_bias, ctx=ctx, prefix=f"{prefix}.qkv_proj")
        self.o_proj = RowParallelLinear(cfg.q_size, cfg.hidden_size, bias=cfg.o_bias, ctx=ctx, prefix=f"{prefix}.o_proj")
        # Heads of this rank (all of them with one rank).
        self.num_heads, self.num_kv_heads = self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads
        self.head_dim = cfg.head_dim
        self.q_size, self.kv_size = self.num_heads * cfg.head_dim, self.num_kv_heads * cfg.head_dim
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        self.qk_norm = cfg.qk_norm
        self.sliding_window = cfg.sliding_window
        self.rotary = rotary
        self.backend = backend
        self.scale = cfg.head_dim ** -0.5
        if ctx.kv_cache_fp8:  # calibrated at build (ingot/quantization/kv_cache.py), the same on every rank
            self.register_buffer("kv_scale", torch.ones(2, dtype=torch.float32))
        else:
            self.kv_scale = None

    def forward(self, positions, x, kv_cache, meta: AttentionMetadata):
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)  # (T, H, D)
        k = k.view(-1, self.num_kv_heads, self.head_dim)  # (T, Hkv, D)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.rotary(positions, q, k)
        out = self.backend.forward(q, k, v, kv_cache, meta, self.scale, self.sliding_window, self.kv_scale)
        return self.o_proj(out.reshape(-1, self.q_size))


class LlamaMLP(nn.Module):
    def __init__(self, cfg: ModelConfig, ctx: LayerContext, prefix: str) -> None:
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(cfg.hidden_size, [cfg.intermediate_size] * 2,
                                                       bias=cfg.mlp_bias, ctx=ctx, prefix=f"{prefix}.gate_up_proj")
        self.down_proj = RowParallelLinear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias, ctx=ctx,
                                           prefix=f"{prefix}.down_proj")

    def forward(self, x):
        # at one token, SiLU·mul runs inside the down_proj GEMV (ingot/layers/fused.py)
        return silu_mul_linear(self.down_proj, self.gate_up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, rotary: RotaryEmbedding, backend: AttentionBackend,
                 ctx: LayerContext, prefix: str) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = LlamaAttention(cfg, rotary, backend, ctx, f"{prefix}.self_attn")
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = LlamaMLP(cfg, ctx, f"{prefix}.mlp")
        # each norm feeds one linear layer: an FP8 one takes the norm's output quantized in the same kernel
        self.input_layernorm.feeds(self.self_attn.qkv_proj)
        self.post_attention_layernorm.feeds(self.mlp.gate_up_proj)

    def forward(self, positions, hidden, residual, kv_cache, meta):
        if residual is None:
            residual, hidden = hidden, self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden, kv_cache, meta)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class LlamaForCausalLM(nn.Module):
    """One rank's part of the model: with pipeline stages, only its stage's layers (named by their
    global index, so engine names do not depend on the layout), the embedding on the first stage
    and the final norm and lm_head on the last. Parameters are created in torch's default dtype
    (the loader sets it to the engine's) unless a linear method chooses its own."""

    def __init__(self, cfg: ModelConfig, backend: AttentionBackend, max_positions: int,
                 ctx: LayerContext | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        ctx = ctx or LayerContext.single(cfg.num_layers)
        rank = ctx.rank
        # One rotary table shared by all layers; not a module child of each layer's state dict.
        rotary = RotaryEmbedding(cfg.head_dim, max_positions, cfg.rope_theta, cfg.rope_scaling)
        self.embed_tokens = VocabEmbedding(cfg.vocab_size, cfg.hidden_size, ctx) if rank.is_first_stage else None
        self.layers = nn.ModuleDict({str(i): LlamaDecoderLayer(cfg, rotary, backend, ctx, f"layers.{i}")
                                     for i in rank.layer_ids})
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps) if rank.is_last_stage else None
        self.lm_head = None
        if rank.is_last_stage:
            self.lm_head = TiedLMHead(self.embed_tokens) if cfg.tie_word_embeddings and self.embed_tokens is not None \
                else LMHead(cfg.vocab_size, cfg.hidden_size, ctx)
        self.rotary = rotary

    def forward(self, input_ids, positions, kv_caches: list[torch.Tensor], meta: AttentionMetadata,
                intermediate: tuple[torch.Tensor, torch.Tensor] | None = None):
        """input_ids, positions: (T,); kv_caches: one per layer of this rank. The first stage embeds
        input_ids, a later one continues from `intermediate` = (hidden, residual), each (T, hidden),
        of the stage before. The last stage returns the final hidden states (T, hidden); an earlier
        one returns (hidden, residual) for the next."""
        if self.embed_tokens is not None:
            hidden, residual = self.embed_tokens(input_ids), None
        else:
            hidden, residual = intermediate
        for layer, kv_cache in zip(self.layers.values(), kv_caches):
            hidden, residual = layer(positions, hidden, residual, kv_cache, meta)
        if self.norm is None:
            return hidden, residual
        hidden, _ = self.norm(hidden, residual)
        return hidden

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: (N, hidden) -> (N, vocab) float32."""
        return self.lm_head(hidden)

    def weight_sources(self) -> dict[str, str]:
        """Parameters filled from another engine tensor: with tied embeddings, a last stage that
        lacks the embedding keeps its own copy of it as the lm_head."""
        if self.cfg.tie_word_embeddings and isinstance(self.lm_head, LMHead):
            return {"lm_head.weight": "embed_tokens.weight"}
        return {}


# ---- checkpoint (HF names) -> engine (fused runtime layout) ----

_FUSED = {  # HF projection -> (fused engine projection, position in the fused rows)
    "self_attn.q_proj": ("self_attn.qkv_proj", 0),
    "self_attn.k_proj": ("self_attn.qkv_proj", 1),
    "self_attn.v_proj": ("self_attn.qkv_proj", 2),
    "mlp.gate_proj": ("mlp.gate_up_proj", 0),
    "mlp.up_proj": ("mlp.gate_up_proj", 1),
}
_FUSED_PARTS = {"self_attn.qkv_proj": 3, "mlp.gate_up_proj": 2}
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def convert_hf_weights(cfg: ModelConfig, hf_tensors):
    """Yield (engine_name, tensor) from (hf_name, tensor) pairs, fusing q/k/v and gate/up.

    Parts of a fused matrix may arrive in any order (sharded checkpoints); they are held until
    all parts of that matrix are present, so at most one layer's worth is buffered.
    """
    pending: dict[str, dict[int, torch.Tensor]] = {}
    for name, tensor in hf_tensors:
        name = name.removeprefix("model.")
        if name.endswith(_IGNORED_SUFFIXES) or (name == "lm_head.weight" and cfg.tie_word_embeddings):
            continue
        fused = _fused_target(name)
        if fused is None:
            yield name, tensor
            continue
        target, index = fused
        parts = pending.setdefault(target, {})
        parts[index] = tensor
        if len(parts) == _parts_of(target):
            yield target, torch.cat([parts[i] for i in sorted(parts)], dim=0)
            del pending[target]
    if pending:
        raise KeyError(f"checkpoint is missing parts of fused weights: {sorted(pending)}")


def _fused_target(name: str) -> tuple[str, int] | None:
    # name: layers.{i}.{module}.{proj}.{weight|bias}
    parts = name.split(".")
    if len(parts) != 5 or parts[0] != "layers":
        return None
    key = f"{parts[2]}.{parts[3]}"
    if key not in _FUSED:
        return None
    fused, index = _FUSED[key]
    return f"layers.{parts[1]}.{fused}.{parts[4]}", index


def _parts_of(target: str) -> int:
    # target: layers.{i}.{module}.{fused_proj}.{weight|bias}
    module_proj = ".".join(target.split(".")[2:4])
    return _FUSED_PARTS[module_proj]
