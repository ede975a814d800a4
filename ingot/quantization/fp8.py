"""FP8 W8A8 (E4M3 weights and activations) for the block linear layers; the embedding, the lm_head
and the norms stay in the model dtype.

    per_channel  weights: one scale per output channel (its largest magnitude -> 448);
                 activations: one scale per token, at run time. Needs no calibration.
    per_tensor   weights: one scale per stored matrix; activations: one static scale per linear
                 input, from the largest magnitude (max, not a percentile) that input reached on
                 the calibration text, observed on the unquantized model.

Fused layers share what they must: q/k/v read one input and gate/up another, so each fused layer
has one input scale; under per_tensor the fused matrix gets one weight scale, the largest of its
parts', i.e. q, k and v requantized to their shared maximum (vLLM's rule for fused FP8 layers).
"""

from __future__ import annotations

from typing import Any

import torch

from ingot.errors import ConfigError
from ingot.quantization.base import LinearMethod, QuantScheme, Tensors
from ingot.quantization.fp8_format import quantize_per_row, quantize_per_tensor, scale_for
from ingot.quantization.fp8_method import Fp8LinearMethod
from ingot.quantization.int4 import QUANTIZED_LINEARS, is_quantized_linear
from ingot.quantization.unquantized import UnquantizedLinearMethod

SCALINGS = ("per_channel", "per_tensor")
DEFAULT_SCALING = "per_channel"
BLOCK_LINEARS = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")


class Fp8(QuantScheme):
    name = "fp8"

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        super().__init__(params)
        self.scaling = self.params.get("scaling", DEFAULT_SCALING)
        if self.scaling not in SCALINGS:
            raise ConfigError(f"--fp8-scaling {self.scaling} is not supported; use one of {', '.join(SCALINGS)}")
        if self.scaling == "per_channel" and self.params.get("calib_data"):
            raise ConfigError("--calib-data calibrates static activation scales, which only --fp8-scaling "
                              "per_tensor has (per_channel scales each token at run time): drop --calib-data "
                              "or add --fp8-scaling per_tensor")

    @property
    def prequantized(self) -> bool:
        """The weights and scales were read from an FP8 checkpoint (ingot/builder/fp8_checkpoints.py)."""
        return bool(self.params.get("prequantized"))

    @property
    def needs_calibration(self) -> bool:
        return self.scaling == "per_tensor" and not self.prequantized

    def linear_method(self, prefix: str) -> LinearMethod:
        if prefix.rsplit(".", 1)[-1] in QUANTIZED_LINEARS:
            return Fp8LinearMethod(per_channel=self.scaling == "per_channel")
        return UnquantizedLinearMethod()

    def describe(self) -> str:
        if self.scaling == "per_channel":
            how = "per-output-channel weight scales, dynamic per-token activation scales"
        else:
            how = "one weight scale per matrix, static activation scales" + \
                  ("" if self.prequantized else " (max over the calibration text)")
        origin = (f"; pre-quantized: weights and scales read from the {self.params.get('imported_from')} "
                  "checkpoint, not re-quantized" if self.prequantized else "")
        return f"fp8: E4M3 weights and activations of the block linear layers, {how}; " \
               f"embedding, lm_head and norms in the model dtype{origin}"

    def quantize(self, tensors: Tensors, context=None) -> Tensors:
        if self.prequantized:  # the builder's import stage stored them already
            yield from tensors
            return
        if self.scaling == "per_channel":
            for name, tensor in tensors:
                if is_quantized_linear(name):
                    weight, scale = quantize_per_row(tensor)
                    yield name, weight
                    yield name.removesuffix("weight") + "weight_scale", scale
                else:
                    yield name, tensor
            return
        if context is None:
            raise ConfigError("--fp8-scaling per_tensor calibrates its activation scales on a text: pass --calib-data FILE")
        weights = dict(tensors)
        input_amax = observe_input_ranges(context, weights)
        for name, tensor in weights.items():
            if is_quantized_linear(name):
                base = name.removesuffix(".weight")
                weight, scale = quantize_per_tensor(tensor)
                yield name, weight
                yield f"{base}.weight_scale", scale
                yield f"{base}.input_scale", scale_for(input_amax[base]).reshape(1)
            else:
                yield name, tensor


def observe_input_ranges(context, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The largest |x| each block linear layer is fed over the calibration samples, by layer name
    ("layers.3.mlp.down_proj"); one pass through the unquantized model in float32."""
    from tqdm import tqdm

    from ingot.quantization.calibration import BlockRunner

    model = context.float_model(weights)
    runner = BlockRunner(model, context.calibration.samples, context.device)
    amax: dict[str, torch.Tensor] = {}

    def observe(name: str, x: torch.Tensor) -> None:
        seen = x.detach().abs().amax().float().cpu()
        amax[name] = torch.maximum(amax[name], seen) if name in amax else seen

    for index, block in tqdm(model.layers.items(), desc="fp8 calibration", unit="layer"):
        hooks = [block.get_submodule(sub).register_forward_pre_hook(
            lambda module, args, name=f"layers.{index}.{sub}": observe(name, args[0])) for sub in BLOCK_LINEARS]
        try:
            runner.advance(block)
        finally:
            for hook in hooks:
                hook.remove()
    return amax


def scale_lines(scales: dict[str, torch.Tensor]) -> list[str]:
    """`ingot inspect`'s view of an FP8 engine's scales ({name: tensor} of one rank's *_scale tensors):
    one line per linear layer."""
    lines = []
    for name in sorted(n for n in scales if n.endswith(".weight_scale")):
        base = name.removesuffix(".weight_scale")
        weight = scales[name].float()
        if weight.numel() == 1:
            line = f"weight {weight.item():.4g}"
        else:
            line = f"weight {weight.min().item():.4g}..{weight.max().item():.4g} over {weight.numel()} channels"
        if f"{base}.input_scale" in scales:
            line += f", input {scales[f'{base}.input_scale'].item():.4g} (static)"
        else:
            line += ", input per token (dynamic)"
        lines.append(f"  {base:<28} {line}")
    return lines
