"""Memory per GPU for one layout: weights, activations, overhead, and what is left for KV.

    capacity = weights + activations/workspace + runtime overhead + free
    KV pool  = free * CacheConfig.gpu_memory_fraction       (what the runtime takes, by default)
    fits     = KV for the envelope (concurrency * (ISL + OSL) tokens) <= KV pool
The worst rank is reported: with PP the stage holding ceil(layers / pp) layers and one
embedding table; with TP every matrix and the KV heads split tp ways (KV heads are
replicated when tp exceeds them, and MLA's latent is whole on every rank).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ingot.config import DTYPE_BYTES, CacheConfig
from ingot.plan.precisions import KV_DTYPES, Precision
from ingot.plan.shapes import ModelShape

EMBED_BYTES = 2  # embeddings and lm_head stay 16-bit in every quantization recipe here
LOGITS_BYTES = 4  # the sampler reads fp32 logits, one row of vocab per sequence
# Activation copies of width hidden alive at once in a block: residual stream, normed input,
# attention output and MLP output.
HIDDEN_COPIES = 4
# Tokens one forward step packs at most (chunked prefill); TensorRT-LLM's default too.
DEFAULT_MAX_NUM_TOKENS = 8192
# CUDA context (~0.5 GiB), cuBLAS/cuBLASLt workspaces, Triton kernels and allocator slack.
RUNTIME_OVERHEAD_BYTES = int(1.5 * 2**30)
# NCCL's channel buffers and communicator state, on every rank of a multi-GPU layout.
NCCL_OVERHEAD_BYTES = int(0.5 * 2**30)
KV_MEMORY_FRACTION = CacheConfig().gpu_memory_fraction  # the runtime's default share of free memory


@dataclass(frozen=True)
class Layout:
    tp: int
    pp: int
    ep: int = 1  # MoE only: 1 = every expert sliced tp ways; tp = experts spread whole over TP ranks

    @property
    def num_gpus(self) -> int:
        return self.tp * self.pp

    @property
    def name(self) -> str:
        return f"TP{self.tp} PP{self.pp}" + (f" EP{self.ep}" if self.ep > 1 else "")


@dataclass(frozen=True)
class Envelope:
    isl: int
    osl: int
    concurrency: int  # sequences in flight at once (the engine's max_batch_size)

    @property
    def seq_len(self) -> int:
        return self.isl + self.osl

    @property
    def max_num_tokens(self) -> int:
        return max(self.concurrency, min(DEFAULT_MAX_NUM_TOKENS, self.concurrency * self.isl))


@dataclass(frozen=True)
class Memory:
    """Bytes on one GPU (the fullest rank)."""

    capacity: int
    weights: int
    activations: int
    overhead: int
    kv_envelope: int  # KV for concurrency * (ISL + OSL) tokens
    kv_pool: int  # what the KV cache gets: free * KV_MEMORY_FRACTION (0 when weights don't fit)
    kv_bytes_per_token: int  # on this rank
    kv_tokens: int  # KV capacity in tokens
    max_concurrency: int  # kv_tokens // (ISL + OSL)

    @property
    def fits_weights(self) -> bool:
        return self.weights + self.activations + self.overhead < self.capacity

    @property
    def fits(self) -> bool:
        return self.fits_weights and self.kv_envelope <= self.kv_pool

    def to_dict(self) -> dict:
        return {**asdict(self), "fits_weights": self.fits_weights, "fits": self.fits}


def kv_dtype_bytes(kv_dtype: str) -> float:
    """A resolved KV dtype (never "auto") -> bytes per element."""
    return KV_DTYPES[kv_dtype]


def total_weight_bytes(shape: ModelShape, precision: Precision) -> float:
    """Every weight on one GPU: blocks in the precision's bytes (and per-row scales), embeddings in 16 bits."""
    blocks = shape.dense_layer_params + shape.routed_expert_params
    return blocks * precision.weight_bytes + sum(linear_rows(shape)) * precision.row_scale_bytes \
        + shape.embed_params * EMBED_BYTES


def weight_bytes_per_rank(shape: ModelShape, precision: Precision, layout: Layout) -> int:
    """(layers on the fullest stage / layers) * (block weights / tp + per-row scales) + one embedding
    table / tp, both tables when there is one stage. Row scales follow the rows: TP splits those of
    the column-parallel layers and every rank keeps all of the row-parallel layers' (o, down)."""
    stage_share = -(-shape.num_layers // layout.pp) / shape.num_layers
    blocks = (shape.dense_layer_params + shape.routed_expert_params) * precision.weight_bytes
    column_rows, whole_rows = linear_rows(shape)
    scales = (column_rows / layout.tp + whole_rows) * precision.row_scale_bytes
    tables = shape.embed_params if layout.pp == 1 else shape.vocab_size * shape.hidden_size
    return int(stage_share * (blocks / layout.tp + scales) + tables * EMBED_BYTES / layout.tp)


def linear_rows(shape: ModelShape) -> tuple[int, int]:
    """Output rows of the block linear layers, all layers: (column-parallel: q/k/v, gate/up and
    MLA's projections; row-parallel: o and down, whose outputs every TP rank keeps whole).
    The MoE router stays in the model dtype and is not counted."""
    h = shape.hidden_size
    if shape.is_mla:
        qk = shape.qk_nope_head_dim + shape.qk_rope_head_dim
        q = shape.q_lora_rank + shape.num_heads * qk if shape.q_lora_rank else shape.num_heads * qk
        attention = q + shape.kv_lora_rank + shape.qk_rope_head_dim \
            + shape.num_heads * (shape.qk_nope_head_dim + shape.v_head_dim)
    else:
        attention = (shape.num_heads + 2 * shape.num_kv_heads) * shape.head_dim
    dense_layers = shape.num_layers - shape.num_moe_layers
    experts = shape.num_moe_layers * (shape.num_experts + shape.num_shared_experts)
    column = shape.num_layers * attention + dense_layers * 2 * shape.intermediate_size \
        + experts * 2 * shape.moe_intermediate_size
    return column, shape.num_layers * h + dense_layers * h + experts * h


def activation_bytes(shape: ModelShape, precision: Precision, layout: Layout, env: Envelope) -> int:
    """Peak live activations of one step of max_num_tokens tokens, plus fp32 logits.

    per token: HIDDEN_COPIES * hidden + (q + 2 kv) / tp + 2 * ffn / tp   (gate and up outputs),
    where ffn is the dense intermediate or, for MoE, experts_per_token * moe_intermediate
    (the grouped GEMM materialises every routed copy of a token).
    """
    act = DTYPE_BYTES[precision.act_dtype]
    qkv = (shape.num_heads + 2 * shape.num_kv_heads) * shape.head_dim
    ffn = max(shape.intermediate_size, shape.experts_per_token * shape.moe_intermediate_size)
    width = HIDDEN_COPIES * shape.hidden_size + (qkv + 2 * ffn) / layout.tp
    logits = env.concurrency * shape.vocab_size / layout.tp * LOGITS_BYTES
    return int(env.max_num_tokens * width * act + logits)


def memory_per_gpu(shape: ModelShape, precision: Precision, kv_dtype: str, layout: Layout,
                   env: Envelope, capacity: int) -> Memory:
    weights = weight_bytes_per_rank(shape, precision, layout)
    activations = activation_bytes(shape, precision, layout, env)
    overhead = RUNTIME_OVERHEAD_BYTES + (NCCL_OVERHEAD_BYTES if layout.num_gpus > 1 else 0)
    per_token = shape.kv_bytes_per_token(kv_dtype_bytes(kv_dtype), layout.tp, layout.pp)
    free = capacity - weights - activations - overhead
    pool = int(max(free, 0) * KV_MEMORY_FRACTION)
    tokens = pool // per_token
    return Memory(capacity=capacity, weights=weights, activations=activations, overhead=overhead,
                  kv_envelope=per_token * env.seq_len * env.concurrency, kv_pool=pool,
                  kv_bytes_per_token=per_token, kv_tokens=tokens, max_concurrency=tokens // env.seq_len)
