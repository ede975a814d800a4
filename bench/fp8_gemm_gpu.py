"""FP8 W8A8 GEMMs on the Llama-3.1-8B linear shapes (random weights, per-output-channel weight scales,
per-token activation scales), every kernel timed inside a CUDA graph as decode runs, weights
rotated past L2 so that each call reads its weight from HBM (benchlib.graph_seconds):

    ingot        every FP8 tactic a build times at this M (ingot/tactics/fp8_tuning.py: cuBLASLt
                 through torch._scaled_mm, Triton tl.dot tiles, the GEMV for M <= 4); the best is
                 what a build picks. `ingot_quant_s` is the per-token activation quantization kernel
                 (ingot/kernels/fp8_quant.py) that feeds the o_proj; qkv, gate_up and down get it
                 fused into the RMSNorm / SiLU·mul kernels before them.
    torchao      torchao 0.18.0 Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()) on
                 an nn.Linear of the same weight: its forward quantizes the bf16 input and multiplies
                 (the peer's whole linear; compare with ingot_best_s + ingot_quant_s)
    cublas_bf16  F.linear on the bf16 weight

    python bench/fp8_gemm_gpu.py --out DIR      (torchao from a carried wheel)

Writes DIR/DATE-h200-fp8-gemm.json: per (layer, M) the seconds of each, the bytes ingot's GEMM
reads and its ratio to the same-run copy bandwidth, the FP8 and bf16 matmul ceilings, and per M the
GEMM time of a whole decode step's 32 decoder blocks.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from benchlib import graph_seconds, record_header, write_record

from ingot.bench.ceilings import measure_ceilings

CONFIG = Path(__file__).resolve().parent / "configs" / "llama-3.1-8b.json"
MS = (1, 4, 16, 64, 256, 1024, 4096, 8192)


def layer_shapes(hf: dict) -> dict[str, tuple[int, int]]:
    head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    q, kv = hf["num_attention_heads"] * head_dim, hf["num_key_value_heads"] * head_dim
    h, inter = hf["hidden_size"], hf["intermediate_size"]
    return {"qkv": (q + 2 * kv, h), "o": (h, q), "gate_up": (2 * inter, h), "down": (h, inter)}


def rotating(items: list):
    """A callable's argument source that hands out the next copy on every call (one per captured call)."""
    state = {"i": 0}

    def next_item():
        state["i"] += 1
        return items[state["i"] % len(items)]
    return next_item


def copies_past_l2(nbytes: int) -> int:
    return min(16, max(2, math.ceil(3 * torch.cuda.get_device_properties(0).L2_cache_size / nbytes)))


def torchao_linears(dense: torch.Tensor, copies: int):
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    linears = []
    for _ in range(copies):
        linear = torch.nn.Linear(dense.shape[1], dense.shape[0], bias=False, dtype=torch.bfloat16, device="cuda")
        linear.weight.data.copy_(dense)
        quantize_(linear, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
        linears.append(linear)
    return linears


def measure_shape(name: str, n: int, k: int) -> list[dict]:
    from ingot.kernels.fp8_quant import quantize_fp8
    from ingot.quantization.fp8_format import quantize_per_row
    from ingot.tactics.fp8_tuning import fp8_candidates, fp8_linear_fn

    torch.manual_seed(0)
    dense = (torch.randn(n, k, device="cuda") * k ** -0.5).bfloat16()
    w_q, w_scale = quantize_per_row(dense)
    fp8_weights = rotating([(w_q.clone(), w_scale.clone()) for _ in range(copies_past_l2(n * k))])
    bf16_weights = rotating([dense.clone() for _ in range(copies_past_l2(2 * n * k))])
    try:
        peer = rotating(torchao_linears(dense, copies_past_l2(n * k)))
    except Exception as exc:  # recorded: a peer that does not run here is a finding, not a crash
        peer = repr(exc)[:300]
    rows = []
    for m in MS:
        x = torch.randn(m, k, device="cuda").bfloat16()
        x_q, x_scale = quantize_per_row(x)
        reference = (x_q.double() * x_scale.double()) @ (w_q.double() * w_scale.double()).T
        row = {"layer": name, "n": n, "k": k, "m": m, "fp8_bytes": n * k + 4 * n + m * k + 2 * m * n}
        row["cublas_bf16_s"] = graph_seconds(lambda: F.linear(x, bf16_weights()))
        row["ingot_quant_s"] = graph_seconds(lambda: quantize_fp8(x))
        timings = {}
        for tactic in fp8_candidates(m):
            fn = fp8_linear_fn(tactic)
            try:
                out = fn(x_q, x_scale, w_q, w_scale, None, torch.bfloat16)
                if ((out.double() - reference).norm() / reference.norm()).item() > 1e-2:
                    row.setdefault("wrong", []).append(tactic)
                    continue
                timings[tactic] = graph_seconds(lambda: fn(x_q, x_scale, *fp8_weights(), None, torch.bfloat16))
            except Exception as exc:  # a tile that does not fit this card is skipped, and said
                row.setdefault("failed", {})[tactic] = repr(exc)[:200]
        best = min(timings, key=timings.get)
        row.update(ingot_best=best, ingot_best_s=timings[best], ingot_tactics_s=timings)
        row["ingot_best_tbps"] = row["fp8_bytes"] / row["ingot_best_s"] / 1e12
        row["ingot_best_tflops"] = 2 * m * n * k / row["ingot_best_s"] / 1e12
        if isinstance(peer, str):
            row["torchao_error"] = peer
        else:
            try:
                out = peer()(x)
                row["torchao_rel_error"] = ((out.double() - reference).norm() / reference.norm()).item()
                row["torchao_s"] = graph_seconds(lambda: peer()(x))
            except Exception as exc:
                row["torchao_error"] = repr(exc)[:300]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def step_totals(rows: list[dict], layers: int, copy_tbps: float) -> dict:
    """Per M: GEMM seconds of a decode step's decoder blocks (layers x the four linears; the lm_head
    stays bf16 in FP8 engines), ingot's with its one standalone quantization (before o_proj)."""
    totals = {}
    for m in MS:
        at_m = {r["layer"]: r for r in rows if r["m"] == m}
        entry = {"cublas_bf16_s": layers * sum(r["cublas_bf16_s"] for r in at_m.values()),
                 "ingot_best_s": layers * (sum(r["ingot_best_s"] for r in at_m.values()) + at_m["o"]["ingot_quant_s"]),
                 "fp8_floor_s": layers * sum(r["fp8_bytes"] for r in at_m.values()) / (copy_tbps * 1e12)}
        if all("torchao_s" in r for r in at_m.values()):
            entry["torchao_s"] = layers * sum(r["torchao_s"] for r in at_m.values())
        entry["ingot_best_floor_ratio"] = entry["fp8_floor_s"] / entry["ingot_best_s"]
        entry["ingot_speedup_vs_bf16"] = entry["cublas_bf16_s"] / entry["ingot_best_s"]
        totals[str(m)] = entry
    return totals


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    header = record_header(torch.cuda.get_device_name())
    hf = json.loads(CONFIG.read_text())
    ceiling = measure_ceilings("cuda", "bf16", fp8=True)
    rows = [row for name, (n, k) in layer_shapes(hf).items() for row in measure_shape(name, n, k)]
    for row in rows:
        row["ingot_best_copy_ratio"] = row["ingot_best_tbps"] / ceiling["copy_tbps"]
        row["ingot_best_fp8_matmul_ratio"] = row["ingot_best_tflops"] / ceiling["matmul_fp8_tflops"]
    try:
        import torchao
        peer = f"torchao {torchao.__version__} Float8DynamicActivationFloat8WeightConfig(PerRow)"
    except ImportError as exc:
        peer = f"torchao not importable: {exc}"
    record = {**header, "model": "llama-3.1-8b (random weights)", "dtype": "bf16", "quant": "fp8 per_channel",
              **ceiling, "peer": {"torchao": peer},
              "decode_step_gemm": step_totals(rows, hf["num_hidden_layers"], ceiling["copy_tbps"]), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    write_record(args.out / f"{datetime.date.today()}-h200-fp8-gemm.json", record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
