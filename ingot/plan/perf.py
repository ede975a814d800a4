"""First-order throughput: a bandwidth floor for decode, a compute floor for prefill.

Decode, one engine step of b sequences on one rank (one PP stage):
    bytes  = weights read / (tp * pp)  +  b * ctx * KV bytes per token on the rank
             (MoE: only the experts the b tokens touch are read, see ModelShape.experts_touched)
    flops  = 2 * b * active params / (tp * pp)  +  attention over ctx = ISL + OSL / 2 tokens
    t_step = max(bytes / (HBM * DECODE_BW_EFFICIENCY), flops / (peak * MATMUL_EFFICIENCY))
             + TP all-reduces (2 per layer) + the PP hop
With pp stages the batch runs as pp micro-batches of b = B / pp, so every sequence advances
one token per round of pp stage-steps: decode tok/s = B / round, TPOT = round. PP therefore
splits memory but not the bytes a round reads; TP divides both.

Prefill, per prompt token: flops = 2 * block params + causal attention over ISL / 2, run at
peak * MATMUL_EFFICIENCY on every GPU, plus the TP all-reduce traffic it sends.
Offline throughput of B requests: B * OSL / (B * ISL / prefill tok/s + OSL * round).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ingot.config import DTYPE_BYTES
from ingot.plan.gpus import GPU
from ingot.plan.memory import EMBED_BYTES, Envelope, Layout, kv_dtype_bytes
from ingot.plan.precisions import Execution, Precision
from ingot.plan.shapes import ModelShape

# Decode kernels stream weights and KV at ~75% of the datasheet bandwidth. Measured on an H100
# SXM (torch 2.11, CUDA graph): a device copy moves 3.02 TB/s (90% of 3.35), and a chain of
# cuBLAS GEMVs over Llama-8B's bf16 block weights 79% at batch 1-32, 77% at 64, 71% at 128;
# attention over a paged KV cache does no better than the GEMVs.
DECODE_BW_EFFICIENCY = 0.75
# Large GEMMs reach 70-80% of dense peak (same H100: 8192^3 bf16 798 TFLOP/s = 81%, fp8 1450 =
# 73%); norms, rotary, attention and launch gaps bring a whole forward pass to ~60% (the MFU
# good prefill engines report).
MATMUL_EFFICIENCY = 0.60
# Below this many output columns a GEMM tile (128x256 on Hopper) runs partly empty: an expert
# sliced tp ways to fewer columns runs at width / MIN_EFFICIENT_GEMM_N of MATMUL_EFFICIENCY.
MIN_EFFICIENT_GEMM_N = 256
# Expert parallelism: with top-k routing the busiest rank gets ~20% more tokens than average.
EP_IMBALANCE = 1.2
# NCCL all-reduce reaches ~75% of NVLink's one-way bandwidth: 1 GiB on 2-8 H100s measured here
# 329-361 GB/s bus bandwidth of 450.
LINK_EFFICIENCY = 0.75
# Latency of one small all-reduce or PP send: ~8 us over NVLink (custom all-reduce), ~25 us
# through PCIe; decode sends 2 per layer, so this, not bandwidth, is the TP cost at small batch.
NVLINK_LATENCY_S = 8e-6
PCIE_LATENCY_S = 25e-6
# Between nodes (PP across HGX boxes): one 400 Gb/s NIC per GPU, one way.
INTERNODE_GBS = 50.0
INTERNODE_LATENCY_S = 10e-6
# Host work per engine step that CUDA graphs don't hide: schedule, sample, detokenize.
STEP_OVERHEAD_S = 0.5e-3
# ...and the part that grows with the batch: ingot's loop schedules, samples and post-processes
# each sequence every step. Measured on an H200 (Llama-8B shape, bf16) before the engine
# overlapped any host work with the GPU: a batch-256 decode step was 7.2 ms of graph replay and
# ~15 ms end to end under cProfile, i.e. ~30 us per sequence with the profiler's cost, ~25 us
# without it. Since then (commit 5d49497) the engine on CUDA post-processes a pure-decode step
# of OVERLAP_MIN_BATCH (8) or more sequences while the GPU runs the next one
# (ingot/runtime/engine.py), which hides part of this cost; charging all of it keeps the model
# conservative for those steps. Kept as measured: bench/results were recorded against it
# (tests/plan/test_plan_bench_agreement.py).
HOST_S_PER_SEQUENCE_STEP = 25e-6


@dataclass(frozen=True)
class Perf:
    concurrency: int  # sequences actually in flight: the request, capped by KV capacity
    decode_tok_s: float  # all sequences together
    tpot_ms: float  # per-token latency of one sequence
    decode_bound: str  # "memory" or "compute"
    decode_bytes_per_step: float  # per rank
    comm_ms_per_step: float  # TP all-reduces + PP hops in one decode round
    prefill_tok_s: float  # prompt tokens per second, the whole layout busy
    ttft_ms: float  # one request alone: its whole prompt, no queueing
    output_tok_s: float  # offline ISL/OSL throughput, trtllm-bench style

    def to_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _link(gpu: GPU) -> tuple[float, float]:
    """(one-way bytes/s NCCL moves, latency s) of the link inside a box."""
    latency = NVLINK_LATENCY_S if gpu.link == "nvlink" else PCIE_LATENCY_S
    return gpu.link_gbs / 2 * 1e9 * LINK_EFFICIENCY, latency


def _allreduce_s(nbytes: float, tp: int, gpu: GPU) -> float:
    """Ring all-reduce: each rank sends and receives 2 (tp - 1) / tp of the buffer."""
    if tp == 1:
        return 0.0
    bandwidth, latency = _link(gpu)
    return latency + 2 * (tp - 1) / tp * nbytes / bandwidth


def _pp_hop_s(nbytes: float, gpu: GPU, layout: Layout) -> float:
    if layout.pp == 1:
        return 0.0
    if layout.num_gpus > gpu.nvlink_domain:
        return INTERNODE_LATENCY_S + nbytes / (INTERNODE_GBS * 1e9)
    bandwidth, latency = _link(gpu)
    return latency + nbytes / bandwidth


def _attn_flops_per_ctx_token(shape: ModelShape, absorbed: bool) -> float:
    """QK^T and PV for one query against one cached token, all heads and layers: 2*(qk + v) per head.
    MLA decode works on the latent (qk = rank + rope, v = rank); its prefill on full heads."""
    if shape.is_mla:
        qk, v = ((shape.kv_lora_rank + shape.qk_rope_head_dim, shape.kv_lora_rank) if absorbed else
                 (shape.qk_nope_head_dim + shape.qk_rope_head_dim, shape.v_head_dim))
    else:
        qk = v = shape.head_dim
    return 2.0 * shape.num_layers * shape.num_heads * (qk + v)


def _block_flops_per_token(shape: ModelShape) -> float:
    """2 * active params of the blocks: the embedding is a lookup, and lm_head runs only for
    the one token a sequence samples (see _lm_head_flops)."""
    return 2.0 * (shape.active_params - shape.embed_params)


def _lm_head_flops(shape: ModelShape) -> float:
    return 2.0 * shape.vocab_size * shape.hidden_size


def _decode_step_s(shape: ModelShape, precision: Precision, execution: Execution, gpu: GPU,
                   layout: Layout, b: int, ctx: float) -> tuple[float, str, float, float]:
    """One stage-step of a micro-batch of b -> (seconds, bound, bytes per rank, comm seconds)."""
    split = layout.tp * layout.pp
    routed = shape.num_moe_layers * shape.experts_touched(b) * shape.expert_params
    weights = (shape.dense_layer_params + routed) * precision.weight_bytes
    lm_head = shape.vocab_size * shape.hidden_size * EMBED_BYTES
    kv = b * ctx * shape.kv_bytes_per_token(kv_dtype_bytes(execution.kv_dtype), layout.tp, layout.pp)
    nbytes = (weights + lm_head) / split + kv
    flops = b * (_block_flops_per_token(shape) + _lm_head_flops(shape)
                 + ctx * _attn_flops_per_ctx_token(shape, True)) / split
    t_mem = nbytes / (gpu.bandwidth_gbs * 1e9 * DECODE_BW_EFFICIENCY)
    t_compute = flops / (gpu.tflops[execution.compute] * 1e12 * MATMUL_EFFICIENCY)
    act = b * shape.hidden_size * DTYPE_BYTES[precision.act_dtype]
    layers = -(-shape.num_layers // layout.pp)
    comm = 2 * layers * _allreduce_s(act, layout.tp, gpu) + _pp_hop_s(act, gpu, layout)
    bound = "memory" if t_mem >= t_compute else "compute"
    return max(t_mem, t_compute) + comm, bound, nbytes, comm


def _expert_efficiency(shape: ModelShape, layout: Layout) -> float:
    """Slowdown of expert GEMMs: thin TP slices, or EP's load imbalance."""
    if not shape.is_moe:
        return 1.0
    if layout.ep > 1:
        return 1.0 / EP_IMBALANCE
    width = shape.moe_intermediate_size / layout.tp
    return min(1.0, width / MIN_EFFICIENT_GEMM_N)


def _prefill_token_s(shape: ModelShape, precision: Precision, execution: Execution, gpu: GPU,
                     layout: Layout, isl: int) -> float:
    """Seconds one prompt token costs a TP group running all layers (pp stages in turn)."""
    routed = shape.num_moe_layers * shape.experts_per_token * shape.expert_params * 2.0
    other = _block_flops_per_token(shape) - routed + isl / 2 * _attn_flops_per_ctx_token(shape, False)
    rate = gpu.tflops[execution.compute] * 1e12 * MATMUL_EFFICIENCY * layout.tp
    t_compute = other / rate + routed / (rate * _expert_efficiency(shape, layout))
    act = shape.hidden_size * DTYPE_BYTES[precision.act_dtype]
    bandwidth, _ = _link(gpu)
    comm = 2 * shape.num_layers * (2 * (layout.tp - 1) / layout.tp) * act / bandwidth
    return t_compute + comm


def estimate(shape: ModelShape, precision: Precision, execution: Execution, gpu: GPU, layout: Layout,
             env: Envelope, max_concurrency: int) -> Perf:
    """Throughput and latency for the envelope, with concurrency capped by KV capacity (>= 1)."""
    concurrency = max(1, min(env.concurrency, max_concurrency))
    ctx = env.isl + env.osl / 2  # average context a decode step attends over
    micro = -(-concurrency // layout.pp)
    step, bound, nbytes, comm = _decode_step_s(shape, precision, execution, gpu, layout, micro, ctx)
    round_s = layout.pp * step + STEP_OVERHEAD_S + concurrency * HOST_S_PER_SEQUENCE_STEP
    token_s = _prefill_token_s(shape, precision, execution, gpu, layout, env.isl)
    prefill_tok_s = layout.pp / token_s  # stages work on different chunks at once
    prompt_bytes = env.isl * shape.hidden_size * DTYPE_BYTES[precision.act_dtype]
    ttft = env.isl * token_s + layout.pp * _pp_hop_s(prompt_bytes, gpu, layout) + STEP_OVERHEAD_S
    wave = concurrency * env.isl / prefill_tok_s + env.osl * round_s
    return Perf(concurrency=concurrency, decode_tok_s=concurrency / round_s, tpot_ms=round_s * 1e3,
                decode_bound=bound, decode_bytes_per_step=nbytes, comm_ms_per_step=layout.pp * comm * 1e3,
                prefill_tok_s=prefill_tok_s, ttft_ms=ttft * 1e3,
                output_tok_s=concurrency * env.osl / wave)
