"""Checkpoints that are already quantized to 4-bit weights, read into ingot's INT4 layout
(ingot/quantization/int4_format.py) at build: nothing is re-quantized. (FP8 ones: fp8_checkpoints.py.)

    compressed-tensors "pack-quantized" (what llm-compressor writes; quant_method "compressed-tensors")
        weight_packed  int32 (N, ceil(K/8))  code + 8 of column k in bits 4 (k % 8) of word k // 8: ingot's bits
        weight_scale   (N, K / G);  weight_zero_point  int32 (ceil(N/8), K / G) packed along N the same way,
        absent when symmetric (zero 0);  w = (code - zero) * scale with signed code and zero
    AutoAWQ "gemm" (quant_method "awq")
        qweight int32 (K, N/8), qzeros int32 (K/G, N/8): packed along N, nibble i of word j holding
        column 8j + [0, 2, 4, 6, 1, 3, 5, 7][i];  scales (K/G, N);  w = (q - z) * s
    GPTQ (quant_method "gptq")
        qweight int32 (K/8, N) packed along K (nibble i of word r: row 8r + i); qzeros int32 (K/G, N/8)
        packed along N; scales (K/G, N); g_idx (K,) the group of each input column; the stored zero
        is one less than the real one in the original format (checkpoint_format "gptq"), not in
        "gptq_v2". With act-order (desc_act) the groups are not contiguous: ingot stores the columns
        sorted by group and keeps the permutation (perm), one per layer (q, k and v share theirs).

Each source linear layer's tensors may arrive in any order (sharded files); they are held until
complete, then yielded under the layer's Hugging Face name with ingot's suffixes (qweight, scales,
zeros), which the model family's conversion fuses like any weight.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ingot.builder import fp8_checkpoints
from ingot.config import QuantConfig
from ingot.errors import CheckpointError
from ingot.quantization.int4_format import pack, unpack

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
_PARTS = {
    "compressed-tensors": ("weight_packed", "weight_scale", "weight_shape"),
    "autoawq": ("qweight", "qzeros", "scales"),
    "gptq": ("qweight", "qzeros", "scales", "g_idx"),
}
_OPTIONAL = {"compressed-tensors": ("weight_zero_point",)}
_FUSED_INPUTS = {"q_proj": "self_attn.qkv_proj", "gate_proj": "mlp.gate_up_proj", "o_proj": "self_attn.o_proj",
                 "down_proj": "mlp.down_proj"}  # the member that names a fused layer's shared input order


@dataclass(frozen=True)
class QuantizedFormat:
    name: str  # compressed-tensors | autoawq | gptq
    group_size: int
    act_order: bool = False
    zero_offset: int = 0  # added to stored zero points (GPTQ's original format stores zero - 1)
    symmetric: bool = False

    def quant_params(self) -> dict:
        return {"group_size": self.group_size, "act_order": self.act_order, "imported_from": self.name}

    def quant_config(self) -> QuantConfig:
        return QuantConfig("int4_checkpoint", self.quant_params())

    def describe(self) -> str:
        return f"{self.name}, group {self.group_size}"

    def import_tensors(self, tensors: Iterator[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
        return import_tensors(self, tensors)


def detect(hf_config: dict, source: str) -> QuantizedFormat | fp8_checkpoints.Fp8Format | None:
    """The checkpoint's format from config.json's quantization_config (4-bit here, FP8 in
    fp8_checkpoints.py); None when unquantized."""
    config = hf_config.get("quantization_config")
    if not config:
        return None
    if fp8_checkpoints.is_fp8(config):
        return fp8_checkpoints.detect(config, source)
    method = config.get("quant_method")
    if method == "awq":
        _require(config.get("bits", 4) == 4 and config.get("version", "gemm").lower() == "gemm", source,
                 f"AWQ with bits={config.get('bits')} version={config.get('version')}")
        return QuantizedFormat("autoawq", int(config["group_size"]))
    if method == "gptq":
        _require(config.get("bits", 4) == 4, source, f"GPTQ with bits={config.get('bits')}")
        offset = 0 if config.get("checkpoint_format") == "gptq_v2" else 1
        return QuantizedFormat("gptq", int(config["group_size"]), bool(config.get("desc_act")), offset)
    if method == "compressed-tensors":
        return _compressed_tensors_format(config, source)
    raise CheckpointError(f"{source}: quantization_config.quant_method={method!r} is not a format ingot reads; "
                          "it reads 4-bit weights in compressed-tensors pack-quantized, AutoAWQ gemm and GPTQ formats, and "
                          "FP8 weights in compressed-tensors float-quantized and the fp8 format")


def _compressed_tensors_format(config: dict, source: str) -> QuantizedFormat:
    groups = list((config.get("config_groups") or {}).values())
    _require(config.get("format") == "pack-quantized" and len(groups) == 1, source,
             f"compressed-tensors format={config.get('format')!r} with {len(groups)} config groups")
    weights = groups[0].get("weights") or {}
    _require(weights.get("num_bits") == 4 and weights.get("type") == "int" and weights.get("strategy") == "group"
             and not groups[0].get("input_activations"), source, f"compressed-tensors weights {weights}")
    _require(weights.get("actorder") in (None, "weight", "static"), source,
             f"compressed-tensors actorder={weights.get('actorder')!r} (a per-column group index)")
    return QuantizedFormat("compressed-tensors", int(weights["group_size"]), symmetric=bool(weights.get("symmetric")))


def _require(ok: bool, source: str, what: str) -> None:
    if not ok:
        raise CheckpointError(f"{source}: {what} is not supported; ingot reads 4-bit integer weights, group-wise, "
                              "with 16-bit activations (W4A16)")


def import_tensors(fmt: QuantizedFormat, tensors: Iterator[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """Hugging Face-named tensors in, the same names with every 4-bit layer in ingot's layout out."""
    parts, optional = _PARTS[fmt.name], _OPTIONAL.get(fmt.name, ())
    pending: dict[str, dict[str, torch.Tensor]] = {}
    perms: dict[str, torch.Tensor] = {}
    for name, tensor in tensors:
        module, _, suffix = name.rpartition(".")
        if suffix not in parts + optional:
            yield name, tensor
            continue
        held = pending.setdefault(module, {})
        held[suffix] = tensor
        if all(p in held for p in parts) and _complete(fmt, held):
            yield from _converted(fmt, module, pending.pop(module), perms)
    for module, held in pending.items():
        if all(p in held for p in parts):
            yield from _converted(fmt, module, held, perms)
        else:
            raise CheckpointError(f"{module}: the checkpoint lacks {sorted(set(parts) - set(held))} of this layer")


def _complete(fmt: QuantizedFormat, held: dict) -> bool:
    """compressed-tensors stores a zero point only when asymmetric: wait for it then."""
    return fmt.name != "compressed-tensors" or fmt.symmetric or "weight_zero_point" in held


def _converted(fmt: QuantizedFormat, module: str, held: dict, perms: dict) -> Iterator[tuple[str, torch.Tensor]]:
    qweight, scales, zeros, perm = {"compressed-tensors": _from_compressed_tensors, "autoawq": _from_autoawq,
                                    "gptq": _from_gptq}[fmt.name](fmt, held)
    yield f"{module}.qweight", qweight
    yield f"{module}.scales", scales.contiguous()
    yield f"{module}.zeros", zeros.contiguous()
    if fmt.act_order:
        yield from _perm_once(module, perm, perms)


def _perm_once(module: str, perm: torch.Tensor, perms: dict) -> Iterator[tuple[str, torch.Tensor]]:
    """Layers fused in ingot read one input in one order: q/k/v (and gate/up) must agree; the
    permutation is stored once, under the fused layer's engine name."""
    prefix, _, proj = module.rpartition(".")
    layer = prefix.removeprefix("model.").rsplit(".", 1)[0]  # layers.{i}
    fused = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "gate_proj": "gate_up", "up_proj": "gate_up"}
    key = f"{layer}.{fused.get(proj, proj)}"
    if key in perms:
        if not torch.equal(perms[key], perm):
            raise CheckpointError(f"{module}: its act-order permutation differs from its fused siblings'; ingot "
                                  "fuses q/k/v and gate/up, which then must read their input in one order")
        return
    perms[key] = perm
    target = {"qkv": "self_attn.qkv_proj", "gate_up": "mlp.gate_up_proj"}.get(fused.get(proj), None)
    yield f"{layer}.{target or prefix.rsplit('.', 1)[-1] + '.' + proj}.perm", perm


def _from_compressed_tensors(fmt: QuantizedFormat, held: dict):
    n, k = (int(v) for v in held["weight_shape"].tolist())
    qweight = held["weight_packed"].to(torch.int32)
    if tuple(qweight.shape) != (n, -(-k // 8)):
        raise CheckpointError(f"weight_packed of shape {tuple(qweight.shape)} does not hold a ({n}, {k}) weight")
    scales = held["weight_scale"]
    if fmt.symmetric:
        zeros = torch.full(scales.shape, 8, dtype=torch.uint8)
    else:  # packed along N with the same +8 offset: the stored nibbles are ingot's zero points
        zeros = unpack(held["weight_zero_point"].to(torch.int32).T.contiguous(), n).T
    return qweight, scales, zeros, torch.arange(k, dtype=torch.int32)


def _unpack_along_n(packed: torch.Tensor, order=tuple(range(8))) -> torch.Tensor:
    """(R, N/8) int32 -> (R, N) codes; nibble i of word j holds column 8j + order[i]."""
    nibbles = unpack(packed.to(torch.int32), packed.shape[1] * 8).view(packed.shape[0], -1, 8)
    codes = torch.empty_like(nibbles)
    codes[:, :, list(order)] = nibbles
    return codes.view(packed.shape[0], -1)


def _from_autoawq(fmt: QuantizedFormat, held: dict):
    codes = _unpack_along_n(held["qweight"], AWQ_ORDER)  # (K, N)
    zeros = _unpack_along_n(held["qzeros"], AWQ_ORDER)  # (K/G, N)
    return pack(codes.T), held["scales"].T, zeros.T.to(torch.uint8), torch.arange(codes.shape[0], dtype=torch.int32)


def _from_gptq(fmt: QuantizedFormat, held: dict):
    qweight, g_idx = held["qweight"].to(torch.int32), held["g_idx"].long()
    k = qweight.shape[0] * 8
    codes = unpack(qweight.T.contiguous(), k).T  # (K, N): rows were packed 8 per word
    zeros = (_unpack_along_n(held["qzeros"]).to(torch.int16) + fmt.zero_offset).clamp(0, 15).to(torch.uint8)
    perm = torch.argsort(g_idx, stable=True)
    sizes = torch.bincount(g_idx)
    if fmt.act_order is False and not torch.equal(g_idx, torch.arange(k) // fmt.group_size):
        raise CheckpointError("g_idx is not in column order but desc_act is false in quantization_config")
    if bool((sizes[:-1] != fmt.group_size).any()):
        raise CheckpointError(f"g_idx gives groups of {sorted(set(sizes.tolist()))} columns, not {fmt.group_size}")
    return pack(codes.T[:, perm]), held["scales"].T, zeros.T, perm.to(torch.int32)
