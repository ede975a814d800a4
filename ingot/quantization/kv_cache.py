"""FP8 KV cache (--kv-cache-dtype fp8): keys and values stored as E4M3 with one K and one V scale
per layer, set at build, stored as engine tensors layers.{i}.self_attn.kv_scale = [k_scale, v_scale].

    calibrated  k_scale = max |k| the layer produced over the calibration samples / 448  (v alike)
    unit        k_scale = v_scale = 1.0 (no calibration text: E4M3's own range, +-448, steps of
                2^-9 below 2^-6)
    stored      E4M3(clamp(k / k_scale, -448, 448)), read back as that * k_scale (fp8_format)

k is what the cache holds: after the k projection, Qwen3's k-norm and rotary, observed where the
attention backend receives it. It is observed on the model as the engine will run it (its linear
layers already stored as --quant stores them, in the engine's dtype), each calibration sample run
alone through calibration.py's BlockRunner, as fp8.observe_input_ranges observes linear inputs.
At run time a key beyond the calibrated maximum saturates at 448 * k_scale.
"""

from __future__ import annotations

import torch

from ingot.attention import AttentionBackend
from ingot.quantization.base import Tensors
from ingot.quantization.fp8_format import scale_for

# The calibration flags: they serve the KV scales and the weights' method when it calibrates
CALIBRATION_KEYS = ("calib_data", "calib_size", "calib_seq_len")


def route_calibration(requested, quant):
    """(the engine's QuantConfig, the calibration flags) at the start of a build. `quant` is the
    requested one, or what a pre-quantized checkpoint brings instead: it keeps the requested KV cache
    settings. The flags (CALIBRATION_KEYS of requested.params) serve the KV scales and, when its
    method calibrates, the weights'; with an fp8 KV cache to calibrate, a method that does not (fp8
    per_channel refuses --calib-data) is given none."""
    import dataclasses

    from ingot.quantization import make_scheme

    flags = {key: requested.params[key] for key in CALIBRATION_KEYS if key in requested.params}
    quant = dataclasses.replace(quant, kv_cache_dtype=requested.kv_cache_dtype,
                                kv_cache_scales=requested.kv_cache_scales)
    if quant.kv_cache_calibrates:
        bare = dataclasses.replace(quant, params={k: v for k, v in quant.params.items() if k not in CALIBRATION_KEYS})
        if not getattr(make_scheme(bare), "needs_calibration", False):
            quant = bare
    return quant, flags


def kv_scale_name(layer: int | str) -> str:
    return f"layers.{layer}.self_attn.kv_scale"


def add_kv_scales(tensors: Tensors, spec, context=None) -> Tensors:
    """Builder stage after quantize: the stored tensors, then every layer's kv_scale (2,) float32."""
    if spec.quant.kv_cache_scales == "unit":
        yield from tensors
        for layer in range(spec.model.num_layers):
            yield kv_scale_name(layer), torch.ones(2, dtype=torch.float32)
        return
    weights = dict(tensors)
    amax = observe_kv_ranges(context, weights)
    yield from weights.items()
    for layer in range(spec.model.num_layers):
        yield kv_scale_name(layer), scale_for(amax[str(layer)])


def observe_kv_ranges(context, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Layer index -> (2,) float32 [max |k|, max |v|] over the calibration samples."""
    from tqdm import tqdm

    from ingot.quantization.calibration import BlockRunner

    model = context.engine_model(weights)
    runner = BlockRunner(model, context.calibration.samples, context.device)
    observer = _ObservingBackend(runner.backend)
    runner.backend = observer
    for index, block in tqdm(model.layers.items(), desc="kv cache calibration", unit="layer"):
        observer.layer = index
        runner.advance(block)
    return observer.amax


class _ObservingBackend(AttentionBackend):
    """The reference backend, recording the largest |k| and |v| each layer hands it."""

    name = "observing"

    def __init__(self, inner: AttentionBackend) -> None:
        self.inner, self.layer, self.amax = inner, None, {}

    def forward(self, q, k, v, kv_cache, metadata, scale, sliding_window, kv_scale=None):
        seen = torch.stack([k.detach().abs().amax(), v.detach().abs().amax()]).float().cpu()
        self.amax[self.layer] = torch.maximum(self.amax[self.layer], seen) if self.layer in self.amax else seen
        return self.inner.forward(q, k, v, kv_cache, metadata, scale, sliding_window, kv_scale)


def kv_scale_lines(scales: dict[str, torch.Tensor]) -> list[str]:
    """`ingot inspect`'s view of the kv_scale tensors ({name: (2,) tensor}), one line per layer."""
    by_layer = sorted((int(name.split(".")[1]), tensor) for name, tensor in scales.items()
                      if name.endswith(".self_attn.kv_scale"))
    return [f"  layer {layer:<4} k {t[0].item():.4g} (|k| <= {448 * t[0].item():.4g}), "
            f"v {t[1].item():.4g} (|v| <= {448 * t[1].item():.4g})" for layer, t in by_layer]
