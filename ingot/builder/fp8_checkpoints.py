"""Checkpoints already quantized to FP8 (E4M3), read into ingot's FP8 layout at build
(ingot/quantization/fp8_method.py) without re-quantizing.

    compressed-tensors  (what llm-compressor writes and vLLM loads; quant_method "compressed-tensors",
                        format "float-quantized" or "naive-quantized", weights type "float", 8 bits)
        weight        float8_e4m3fn (out, in)
        weight_scale  (out, 1) for strategy "channel", (1,) for "tensor";   w = weight * weight_scale
        input_scale   (1,), only with static ("dynamic": false) per-tensor activations
    fp8                 (quant_method "fp8": AutoFP8's format, which vLLM reads, and transformers' FP8)
        weight        float8_e4m3fn (out, in)
        weight_scale or weight_scale_inv  one per tensor (the multiplier in both spellings:
                      w = weight * scale); (out/b, in/b) with weight_block_size [b, b], refused below
        input_scale or activation_scale   (1,) when activation_scheme is "static"
        No library writes this format on a CPU; it is read as vLLM's Fp8Config and transformers'
        FineGrainedFP8 integration read it.

What ingot runs (the checkpoint's scheme -> ingot's scaling):

    weights  activations            ingot         how
    channel  token, dynamic         per_channel   as stored
    tensor   token, dynamic         per_channel   the one scale repeated on every row: the same numbers
    tensor   tensor, static         per_tensor    fused parts requantized to their shared maximum (below)
    fp8 "dynamic" names no granularity; transformers' FP8 runtime scales such activations per
    token, and so does ingot (per_channel). Everything else (block-wise weights, per-tensor dynamic
    activations, static activations with per-channel weights, weight-only FP8) is refused, naming
    the field: ingot cannot run it as the checkpoint means it.

ingot fuses q/k/v and gate/up. Per-channel scales simply stack; under per_tensor a fused matrix
has one weight scale and one input scale, so, as vLLM does, each part is dequantized with its
own scale and quantized again with the largest of the parts' (exact for the part that holds the
maximum, one E4M3 rounding for the others), and the input scale is the largest of the parts'
(they read the same input, so calibrators give them equal ones).

A layer's tensors may arrive in any order (sharded files); they are held until complete.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ingot.config import QuantConfig
from ingot.errors import CheckpointError
from ingot.quantization.fp8_format import FP8_DTYPE, dequantize, quantize

logger = logging.getLogger("ingot.build")

BLOCK_PROJS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_QKV, _GATE_UP = ("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")
FUSED = {**{p: ("qkv_proj", _QKV) for p in _QKV}, **{p: ("gate_up_proj", _GATE_UP) for p in _GATE_UP}}  # part -> fused
SPELLINGS = {"weight_scale_inv": "weight_scale", "activation_scale": "input_scale"}  # fp8 format's other names
KV_SCALES = ("k_scale", "v_scale", "q_scale")  # attention scales of a checkpoint's FP8 KV-cache scheme
ZERO_POINTS = ("weight_zero_point", "input_zero_point")
CT_FORMATS = ("float-quantized", "naive-quantized")
REBUILD = "build the model's unquantized checkpoint with --quant fp8 instead"


@dataclass(frozen=True)
class Fp8Format:
    name: str  # compressed-tensors | fp8
    scaling: str  # what ingot runs: per_channel | per_tensor
    scheme: str  # the checkpoint's own scheme, in words, for engine.json
    weight_strategy: str | None = None  # channel | tensor when the config says; None: read from the tensors
    kv_scales: bool = False  # the checkpoint carries FP8 KV-cache scales, which are skipped

    @property
    def static(self) -> bool:
        return self.scaling == "per_tensor"

    def describe(self) -> str:
        return f"fp8 from {self.name}: {self.scheme}"

    def quant_config(self) -> QuantConfig:
        params = {"scaling": self.scaling, "prequantized": True, "imported_from": self.name,
                  "checkpoint_scheme": self.scheme}
        if self.kv_scales:
            params["checkpoint_kv_scales"] = "skipped: the KV cache is stored in the model dtype"
        return QuantConfig("fp8", params)

    def import_tensors(self, tensors: Iterator[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
        return import_tensors(self, tensors)


def is_fp8(config: dict) -> bool:
    """Whether config.json's quantization_config describes float weights (FP8 and its refusals)."""
    if config.get("quant_method") == "fp8":
        return True
    groups = (config.get("config_groups") or {}).values()
    return config.get("quant_method") == "compressed-tensors" and any(
        (g.get("weights") or {}).get("type") == "float" for g in groups)


def detect(config: dict, source: str) -> Fp8Format:
    """The FP8 format of a quantization_config for which is_fp8 holds, or a CheckpointError."""
    if config.get("quant_method") == "fp8":
        return _plain_format(config, source)
    return _compressed_tensors_format(config, source)


def _refuse(source: str, field: str, why: str, fix: str = REBUILD) -> CheckpointError:
    return CheckpointError(f"{source}: quantization_config.{field}: {why}; {fix}")


def _plain_format(config: dict, source: str) -> Fp8Format:
    if config.get("weight_block_size") is not None:
        raise _refuse(source, "weight_block_size", f"{config['weight_block_size']} means block-wise FP8 (a weight "
                      "scale per tile, activations scaled per group of input columns), which ingot's FP8 runtime "
                      "does not run: it scales weights per output channel or per tensor")
    if config.get("fmt", "e4m3") != "e4m3":
        raise _refuse(source, "fmt", f"{config['fmt']!r} is not read; ingot's FP8 is E4M3 (fmt \"e4m3\")")
    scheme = str(config.get("activation_scheme", "dynamic")).lower()  # vLLM's default when absent
    kv_scales = _kv_scales(config, source)
    if scheme == "dynamic":
        return Fp8Format("fp8", "per_channel", "weights per tensor (or channel, as stored), activations dynamic, "
                         "run per token", kv_scales=kv_scales)
    if scheme == "static":
        return Fp8Format("fp8", "per_tensor", "weights per tensor, activations static per tensor", kv_scales=kv_scales)
    raise _refuse(source, "activation_scheme", f"{scheme!r} is not \"static\" or \"dynamic\"")


def _compressed_tensors_format(config: dict, source: str) -> Fp8Format:
    groups = config.get("config_groups") or {}
    for key, group in groups.items():
        fmt = group.get("format") or config.get("format")
        if fmt not in CT_FORMATS:
            raise _refuse(source, f"config_groups.{key}.format" if group.get("format") else "format",
                          f"{fmt!r} is not read for FP8; ingot reads {' and '.join(CT_FORMATS)} "
                          "(float8_e4m3fn weights beside their scales)")
    mapped = {_map_group(key, group, source) for key, group in groups.items()}
    if len(mapped) != 1:
        raise _refuse(source, "config_groups", f"{len(groups)} groups with different schemes "
                      f"({', '.join(sorted(s for _, s, _ in mapped))}); ingot runs one FP8 scheme for every layer")
    (scaling, scheme, weights), = mapped
    return Fp8Format("compressed-tensors", scaling, scheme, weights, _kv_scales(config, source))


def _kv_scales(config: dict, source: str) -> bool:
    """A KV-cache scheme's k_scale / v_scale tensors are skipped: the KV cache keeps the model dtype,
    as vLLM keeps it unless asked for an FP8 KV cache."""
    if config.get("kv_cache_scheme") is None:
        return False
    logger.warning("%s: quantization_config.kv_cache_scheme is set; ingot does not read its FP8 KV-cache "
                   "scales (k_scale, v_scale) and stores the KV cache in the model dtype", source)
    return True


def _map_group(key: str, group: dict, source: str) -> tuple[str, str, str]:
    """(ingot's scaling, the scheme in words, the weights' strategy) of one config group."""
    w, a = group.get("weights") or {}, group.get("input_activations")
    where = f"config_groups.{key}"
    if w.get("type") != "float" or w.get("num_bits") != 8:
        raise _refuse(source, f"{where}.weights", f"type {w.get('type')!r} with num_bits {w.get('num_bits')} is not "
                      "FP8; ingot reads 8-bit float (E4M3) weights here")
    if w.get("strategy") not in ("channel", "tensor"):
        raise _refuse(source, f"{where}.weights.strategy", f"{w.get('strategy')!r} is not run by ingot's FP8 "
                      "runtime, which scales weights per output channel (\"channel\") or per tensor (\"tensor\")")
    if not w.get("symmetric", True) or w.get("dynamic"):
        raise _refuse(source, f"{where}.weights", "asymmetric or dynamic FP8 weights are not run by ingot "
                      "(symmetric: true, dynamic: false is what it reads)")
    if group.get("output_activations"):
        raise _refuse(source, f"{where}.output_activations", "quantized outputs are not run by ingot")
    if not a:
        raise _refuse(source, f"{where}.input_activations", "null means weight-only FP8 (16-bit activations); "
                      "ingot's FP8 runtime quantizes every block linear's input to E4M3",
                      f"requantize with an FP8 W8A8 scheme (e.g. FP8_DYNAMIC), or {REBUILD}")
    strategy, dynamic = a.get("strategy"), a.get("dynamic")
    if strategy == "token" and dynamic is True:
        return "per_channel", f"weights per {w['strategy']}, activations dynamic per token", w["strategy"]
    if strategy == "tensor" and dynamic is False and w["strategy"] == "tensor":
        return "per_tensor", "weights per tensor, activations static per tensor", "tensor"
    raise _refuse(source, f"{where}.input_activations", f"strategy {strategy!r} with dynamic {dynamic!r} and "
                  f"weights per {w['strategy']} is not a scheme ingot runs exactly; it runs per-channel or "
                  "per-tensor weights with dynamic per-token activations, or per-tensor weights with static "
                  "per-tensor activations", f"requantize with FP8_DYNAMIC or FP8, or {REBUILD}")


def import_tensors(fmt: Fp8Format, tensors: Iterator[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """Hugging Face-named tensors in; every FP8 layer out in ingot's layout, still under Hugging
    Face names (the model family's conversion fuses them), except per-tensor fused scales, which
    are yielded under the fused layer's engine name."""
    parts = ("weight", "weight_scale", "input_scale") if fmt.static else ("weight", "weight_scale")
    pending: dict[str, dict[str, torch.Tensor]] = {}
    fused: dict[str, dict[str, tuple]] = {}
    for name, tensor in tensors:
        module, _, suffix = name.rpartition(".")
        suffix = SPELLINGS.get(suffix, suffix)
        if suffix in KV_SCALES and fmt.kv_scales:
            continue  # warned at detect; engine.json records it (checkpoint_kv_scales)
        if suffix in ZERO_POINTS:  # symmetric: some exporters still write them, as zeros
            if bool(tensor.float().any()):
                raise CheckpointError(f"{name} is not zero: asymmetric FP8 is not run by ingot; {REBUILD}")
            continue
        quantized = suffix in parts[1:] or (suffix == "weight" and tensor.dtype == FP8_DTYPE)
        if not quantized:
            if suffix == "weight" and _proj(module) in BLOCK_PROJS:
                raise _refuse_unquantized(module, tensor)
            yield name, tensor
            continue
        held = pending.setdefault(module, {})
        held[suffix] = tensor
        if all(p in held for p in parts):
            yield from _layer(fmt, module, pending.pop(module), fused)
    for module, held in pending.items():
        raise CheckpointError(f"{module}: the checkpoint lacks {sorted(set(parts) - set(held))} of this FP8 layer")
    for target, got in fused.items():
        raise CheckpointError(f"{target}: the checkpoint has FP8 parts {sorted(got)} only; ingot fuses "
                              f"{' + '.join(FUSED[next(iter(got))][1])}")


def _proj(module: str) -> str:
    return module.rsplit(".", 1)[-1]


def _refuse_unquantized(module: str, tensor: torch.Tensor) -> CheckpointError:
    return CheckpointError(f"{module}.weight is {tensor.dtype} with no weight_scale: the checkpoint keeps this block "
                           "linear layer unquantized (quantization_config.ignore or its targets), and ingot's FP8 "
                           f"engine quantizes every block linear layer alike; {REBUILD}, or requantize with "
                           "lm_head (and only non-block layers) ignored")


def _layer(fmt: Fp8Format, module: str, held: dict, fused: dict) -> Iterator[tuple[str, torch.Tensor]]:
    weight, scale = held["weight"], held["weight_scale"].float()
    _check(fmt, module, weight, scale, held.get("input_scale"))
    if _proj(module) not in BLOCK_PROJS:  # e.g. a quantized lm_head: ingot keeps it in the model dtype
        yield f"{module}.weight", dequantize(weight, scale.reshape(-1, 1) if scale.numel() > 1 else scale)
        return
    if not fmt.static:  # per-channel rows; a per-tensor scale repeated on every row is the same numbers
        yield f"{module}.weight", weight
        yield f"{module}.weight_scale", scale.reshape(-1, 1).expand(weight.shape[0], 1).contiguous()
        return
    input_scale = held["input_scale"].float().reshape(1)
    if _proj(module) not in FUSED:
        yield from ((f"{module}.weight", weight), (f"{module}.weight_scale", scale.reshape(1)),
                    (f"{module}.input_scale", input_scale))
        return
    target, members = FUSED[_proj(module)]
    prefix = module.rsplit(".", 1)[0]
    got = fused.setdefault(f"{prefix}.{target}", {})
    got[_proj(module)] = (weight, scale.reshape(1), input_scale)
    if len(got) == len(members):
        del fused[f"{prefix}.{target}"]
        yield from _shared_scale(prefix, target, [(m, *got[m]) for m in members])


def _shared_scale(prefix: str, target: str, parts: list[tuple]) -> Iterator[tuple[str, torch.Tensor]]:
    """Per-tensor parts of one fused matrix -> one weight scale and one input scale: each part's
    weights requantized to the largest weight scale, as vLLM does for its fused FP8 layers."""
    weight_scale = max(s for _, _, s, _ in parts)
    input_scale = max(i for _, _, _, i in parts)
    for proj, weight, scale, _ in parts:
        if not torch.equal(scale, weight_scale):
            weight = quantize(dequantize(weight, scale), weight_scale)
        yield f"{prefix}.{proj}.weight", weight
    yield f"{prefix}.{target}.weight_scale", weight_scale
    yield f"{prefix}.{target}.input_scale", input_scale


def _check(fmt: Fp8Format, module: str, weight: torch.Tensor, scale: torch.Tensor, input_scale) -> None:
    """The tensors must be what the config said: E4M3 weights and scales of the stated granularity."""
    if weight.dtype != FP8_DTYPE:
        raise CheckpointError(f"{module}.weight is {weight.dtype}; ingot reads FP8 weights as float8_e4m3fn "
                              "(E5M2 and integer codes are other formats)")
    rows = weight.shape[0]
    strategy = "tensor" if scale.numel() == 1 else "channel" if scale.numel() == rows and scale.dim() <= 2 \
        and scale.shape[-1] in (1, rows) else None
    if strategy is None:
        raise CheckpointError(f"{module}.weight_scale has shape {tuple(scale.shape)} for a weight of shape "
                              f"{tuple(weight.shape)}: not one scale per tensor or per output channel (block-wise "
                              f"scales are not run by ingot's FP8 runtime); {REBUILD}")
    if fmt.weight_strategy not in (None, strategy):
        raise CheckpointError(f"{module}.weight_scale has shape {tuple(scale.shape)}, scales per {strategy}, but "
                              f"quantization_config says strategy {fmt.weight_strategy!r}: the checkpoint is "
                              "inconsistent; re-export it")
    if fmt.static and strategy == "channel" and _proj(module) in BLOCK_PROJS:
        raise CheckpointError(f"{module}.weight_scale scales each output channel while the activations are static "
                              "per tensor (quantization_config activation_scheme \"static\"): not a scheme ingot "
                              f"runs exactly; {REBUILD}")
    if input_scale is not None and input_scale.numel() != 1:
        raise CheckpointError(f"{module}.input_scale has shape {tuple(input_scale.shape)}; static activations "
                              "take one scale per tensor")
