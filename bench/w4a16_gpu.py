"""The W4A16 GEMM on the Llama-3.1-8B linear shapes (random INT4 weights, group 128, bf16 activations),
every kernel timed inside a CUDA graph as decode runs (benchlib.graph_seconds; launch overhead,
which dominated a first eager timing, is excluded): ingot's Triton kernel (a sweep of its tiles;
the best per shape and M is what a build should pick) against cuBLAS on the bf16 weight, torch's tinygemm (`torch._weight_int4pack_mm`) and gemlite 0.6.0
(A16W4, its H100 configs) on the same card, with the same-run copy and matmul ceilings.

    python bench/w4a16_gpu.py --out DIR       (gemlite from a carried wheel when importable)

Writes DIR/DATE-h200-w4a16-gemm.json: per (layer, M) the seconds of each kernel, the bytes each
reads, its effective bandwidth and the ratio to the copy bandwidth; and the per-token GEMM time of a
whole decode step (32 layers x qkv, o, gate_up, down; the lm_head stays bf16 in INT4 engines).
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from benchlib import graph_seconds, record_header, write_record

from ingot.bench.ceilings import measure_ceilings

CONFIG = Path(__file__).resolve().parent / "configs" / "llama-3.1-8b.json"

GROUP = 128
MS = (1, 2, 4, 8, 16, 32, 64)


def layer_shapes(hf: dict) -> dict[str, tuple[int, int]]:
    head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    q, kv = hf["num_attention_heads"] * head_dim, hf["num_key_value_heads"] * head_dim
    h, inter = hf["hidden_size"], hf["intermediate_size"]
    return {"qkv": (q + 2 * kv, h), "o": (h, q), "gate_up": (2 * inter, h), "down": (h, inter)}


def sweep_configs(m: int):
    """GEMV tiles for M <= 4, tl.dot tiles with block_m the smallest power of two >= M (16 at least)."""
    from ingot.kernels.w4a16 import W4A16Config

    if m <= 4:
        for bn, bk, warps, stages, split in itertools.product((16, 32, 64), (128, 256), (2, 4), (2, 3), (1, 2, 4, 8)):
            yield W4A16Config(1, bn, bk, warps, stages, split)
    bm = max(16, 1 << (m - 1).bit_length())
    for bn, bk, stages, split in itertools.product((64, 128), (128, 256), (3, 4), (1, 2, 4, 8)):
        yield W4A16Config(bm, bn, bk, 4, stages, split)


def int4_bytes(n: int, k: int, m: int) -> int:
    return n * k // 2 + n * (k // GROUP) * 3 + 2 * m * (n + k)  # codes, bf16 scales + uint8 zeros, x and out


def tinygemm(w_codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor):
    """torch's tinygemm: codes packed by torch, scale and zero point as (K/G, N, 2) with w = (q - 8) * s + z."""
    n, k = w_codes.shape
    packed_uint8 = (w_codes[:, ::2] << 4 | w_codes[:, 1::2]).to(torch.uint8)
    packed = torch._convert_weight_to_int4pack(packed_uint8, 8)
    offset = (8 - zeros.float()) * scales.float()  # (q - zero) * s = (q - 8) * s + (8 - zero) * s
    scales_and_zeros = torch.stack([scales.float(), offset], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)
    return lambda x: torch._weight_int4pack_mm(x, packed, GROUP, scales_and_zeros)


def gemlite_layer(w_codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor):
    import gemlite
    from gemlite.helper import A16Wn

    configs = Path(gemlite.__file__).parent / "configs" / "h100.json"
    gemlite.core.GemLiteLinear.load_config(str(configs))
    return A16Wn(device="cuda", dtype=torch.bfloat16).from_weights(w_codes.to(torch.uint8), scales, zeros.to(scales.dtype),
                                                                   4, GROUP)


def measure_shape(name: str, n: int, k: int) -> list[dict]:
    from ingot.kernels.w4a16 import w4a16_gemm
    from ingot.quantization.int4_format import dequantize, round_to_nearest
    from ingot.quantization.int4_method import _decode_config

    torch.manual_seed(0)
    weight = torch.randn(n, k, dtype=torch.bfloat16, device="cuda")
    qweight, scales, zeros = round_to_nearest(weight, GROUP, torch.bfloat16)
    w_codes = torch.stack([(qweight >> (4 * j)) & 0xF for j in range(8)], dim=-1).reshape(n, -1)[:, :k]
    dense = dequantize(qweight, scales, zeros, k, GROUP, torch.bfloat16)
    peers = {}
    for peer_name, make in (("tinygemm", tinygemm), ("gemlite", gemlite_layer)):
        try:
            peers[peer_name] = make(w_codes, scales, zeros)
        except Exception as exc:  # recorded: a peer that does not run here is a finding, not a crash
            peers[peer_name] = repr(exc)[:300]
    rows = []
    for m in MS:
        x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
        reference = (x.double() @ dense.double().T)
        row = {"layer": name, "n": n, "k": k, "m": m, "int4_bytes": int4_bytes(n, k, m), "bf16_bytes": 2 * n * k}
        row["cublas_bf16_s"] = graph_seconds(lambda: F.linear(x, dense))
        default = _decode_config(m, k, GROUP)
        row["ingot_default"] = default.name
        row["ingot_default_s"] = graph_seconds(lambda: w4a16_gemm(x, qweight, scales, zeros, GROUP, None, default))
        timings = []
        for config in sweep_configs(m):
            try:
                out = w4a16_gemm(x, qweight, scales, zeros, GROUP, None, config)
                error = ((out.double() - reference).norm() / reference.norm()).item()
                if error > 1e-2:
                    continue
                timings.append((graph_seconds(lambda: w4a16_gemm(x, qweight, scales, zeros, GROUP, None, config), 10, 5),
                                config.name))
            except Exception:  # a tile that does not compile on this card (shared memory) is skipped
                continue
        best_s, best_name = min(timings)
        row.update(ingot_best=best_name, ingot_best_s=best_s, ingot_configs_tried=len(timings))
        for peer_name, peer in peers.items():
            if isinstance(peer, str):
                row[f"{peer_name}_error"] = peer
                continue
            try:
                out = peer(x)
                row[f"{peer_name}_rel_error"] = ((out.double() - reference).norm() / reference.norm()).item()
                row[f"{peer_name}_s"] = graph_seconds(lambda: peer(x))
            except Exception as exc:
                row[f"{peer_name}_error"] = repr(exc)[:300]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def step_totals(rows: list[dict], layers: int, copy_tbps: float) -> dict:
    """Per M: the GEMM seconds of a decode step's decoder blocks (layers x the four linears), and the floor."""
    totals = {}
    for m in MS:
        at_m = [r for r in rows if r["m"] == m]
        entry = {key: layers * sum(r[key] for r in at_m) for key in ("cublas_bf16_s", "ingot_default_s", "ingot_best_s")}
        for peer in ("tinygemm_s", "gemlite_s"):
            if all(peer in r for r in at_m):
                entry[peer] = layers * sum(r[peer] for r in at_m)
        entry["int4_floor_s"] = layers * sum(r["int4_bytes"] for r in at_m) / (copy_tbps * 1e12)
        entry["ingot_best_floor_ratio"] = entry["int4_floor_s"] / entry["ingot_best_s"]
        entry["ingot_best_speedup_vs_bf16"] = entry["cublas_bf16_s"] / entry["ingot_best_s"]
        totals[str(m)] = entry
    return totals


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    header = record_header(torch.cuda.get_device_name())
    hf = json.loads(CONFIG.read_text())
    ceiling = measure_ceilings("cuda", "bf16")
    rows = [row for name, (n, k) in layer_shapes(hf).items() for row in measure_shape(name, n, k)]
    for row in rows:
        row["ingot_best_tbps"] = row["int4_bytes"] / row["ingot_best_s"] / 1e12
        row["ingot_best_copy_ratio"] = row["ingot_best_tbps"] / ceiling["copy_tbps"]
    record = {**header, "model": "llama-3.1-8b (random weights)", "dtype": "bf16", "quant": f"int4 g{GROUP}",
              "copy_tbps": ceiling["copy_tbps"], "matmul_tflops": ceiling["matmul_tflops"],
              "peer": {"tinygemm": f"torch {torch.__version__} _weight_int4pack_mm",
                       "gemlite": "gemlite 0.6.0 A16Wn (h100.json configs)"},
              "decode_step_gemm": step_totals(rows, hf["num_hidden_layers"], ceiling["copy_tbps"]), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    write_record(args.out / f"{datetime.date.today()}-h200-w4a16-gemm.json", record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
