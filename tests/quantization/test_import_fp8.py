"""FP8 checkpoints quantized elsewhere, built without re-quantizing.

compressed-tensors: the library itself quantizes a tiny Llama (its own config, scale formula and
compressor; ingot's code makes nothing here), saves it, and decompresses it again. The engine's
weights must equal the library's dequantized ones exactly, and its logits the library's own
fake-quantized forward of the same scheme. Under per-tensor scaling ingot fuses q/k/v and gate/up
into one matrix with one scale: the parts are requantized to the largest scale, as vLLM does, and
the reference does that with torch's cast.

The plain "fp8" format (quant_method "fp8") has no library that writes it on a CPU: the test
writes it with safetensors, as transformers' FP8 integration and vLLM's Fp8Config read it."""

from __future__ import annotations

import argparse
import copy
import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from ingot.builder.build import build_engine
from ingot.builder.fp8_checkpoints import Fp8Format, import_tensors
from ingot.builder.quantized_checkpoints import detect
from ingot.config import BuildConfig, QuantConfig
from ingot.engine_format import ENGINE_JSON
from ingot.errors import CheckpointError, ConfigError
from ingot.runtime.engine import LLMEngine
from tests.quantization.test_fp8_engine import _ingot_logits
from tests.tiny_models import make_checkpoint

BUILD = BuildConfig(dtype="fp32", max_batch_size=2, max_input_len=32, max_seq_len=64, max_num_tokens=32,
                    tokens_per_block=8)
FUSED = {"self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
         "self_attn.o_proj": ("self_attn.o_proj",), "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
         "mlp.down_proj": ("mlp.down_proj",)}
PROMPT = torch.randint(0, 311, (23,), generator=torch.Generator().manual_seed(5)).tolist()


def _e4m3(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (x / scale).clamp(-448, 448).to(torch.float8_e4m3fn)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    directory = tmp_path_factory.mktemp("base")
    return directory, make_checkpoint(directory, "LlamaForCausalLM", seed=7)


def _copy_tokenizer(base_dir, directory) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(base_dir / name, directory / name)


def _linears(model):
    return [(name, m) for name, m in model.named_modules() if getattr(m, "quantization_scheme", None) is not None]


def _library_checkpoint(hf_model, preset: str, directory):
    """compressed-tensors quantizes, compresses and saves the model with `preset`; returns the model
    decompressed by the library again (its weights are the library's dequantized ones; its forward
    quantizes each linear's input as the scheme says)."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (QuantizationConfig, QuantizationStatus, apply_quantization_config,
                                                 preset_name_to_scheme)
    from compressed_tensors.quantization.utils.helpers import calculate_qparams

    model = copy.deepcopy(hf_model)
    apply_quantization_config(model, QuantizationConfig(
        config_groups={"group_0": preset_name_to_scheme(preset, ["Linear"])}, ignore=["lm_head"]), show_progress=False)
    observed = {}  # static input scales: the min and max each linear is fed, unquantized (llm-compressor's minmax)

    def observe(module, args):
        lo, hi = observed.get(module, (args[0].min(), args[0].max()))
        observed[module] = (torch.minimum(lo, args[0].min()), torch.maximum(hi, args[0].max()))

    hooks = [m.register_forward_pre_hook(observe) for _, m in _linears(model)]
    for _, m in _linears(model):
        m.quantization_enabled = False
    with torch.no_grad():
        model(torch.randint(0, 311, (2, 24), generator=torch.Generator().manual_seed(1)))
    for hook in hooks:
        hook.remove()
    for _, m in _linears(model):
        m.quantization_enabled = True
        w, args = m.weight.detach(), m.quantization_scheme.weights
        dims = {"dim": 1, "keepdim": True} if args.strategy == "channel" else {}
        scale, _ = calculate_qparams(w.amin(**dims).reshape(-1), w.amax(**dims).reshape(-1), args)
        m.weight_scale.data.copy_(scale.reshape(m.weight_scale.shape))
        inputs = m.quantization_scheme.input_activations
        if not inputs.dynamic:
            scale, _ = calculate_qparams(observed[m][0].reshape(1), observed[m][1].reshape(1), inputs)
            m.input_scale.data.copy_(scale.reshape(1))
        m.quantization_status = QuantizationStatus.FROZEN
    compressor = ModelCompressor.from_pretrained_model(model)
    compressor.compress_model(model)
    model.save_pretrained(directory)
    compressor.update_config(directory)
    compressor.decompress_model(model)
    return model


def _engine_weights(engine_dir) -> dict[str, torch.Tensor]:
    """Each fused linear layer's weight as the engine holds it, dequantized: E4M3 values x scale."""
    model = LLMEngine(engine_dir, device="cpu").model
    weights = {}
    for i in range(2):
        for name in FUSED:
            layer = model.layers[str(i)].get_submodule(name)
            assert layer.weight.dtype == torch.float8_e4m3fn
            weights[f"{i}.{name}"] = layer.weight.float() * layer.weight_scale.reshape(-1, 1)
    return weights


def _shared_max(reference_model) -> int:
    """Requantize each per-tensor fused group to its largest scale with torch's cast (vLLM's rule);
    returns how many parts it changed."""
    changed = 0
    for layer in reference_model.model.layers:
        for parent, parts in ((layer.self_attn, ("q_proj", "k_proj", "v_proj")), (layer.mlp, ("gate_proj", "up_proj"))):
            modules = [getattr(parent, p) for p in parts]
            shared = max(m.weight_scale.detach().reshape(()) for m in modules)
            for m in modules:
                if m.weight_scale.item() != shared.item():
                    m.weight.data = _e4m3(m.weight.data, shared).float() * shared
                    changed += 1
    return changed


@pytest.mark.parametrize("preset,scaling", [("FP8_DYNAMIC", "per_channel"), ("FP8", "per_tensor")])
def test_compressed_tensors_fp8_made_by_the_library(base, tmp_path, capsys, preset, scaling):
    pytest.importorskip("compressed_tensors")
    base_dir, hf_model = base
    checkpoint = tmp_path / "ct"
    reference = _library_checkpoint(hf_model, preset, checkpoint)
    _copy_tokenizer(base_dir, checkpoint)
    if scaling == "per_tensor":
        assert _shared_max(reference) > 0, "parts with different scales, or the requantization goes untested"
    with pytest.raises(ConfigError, match=r"is quantized already \(fp8 from compressed-tensors: .*\); build it "
                                          r"without --quant fp8"):
        build_engine(str(checkpoint), tmp_path / "e", BUILD, device="cpu", quant=QuantConfig("fp8"))
    build_engine(str(checkpoint), tmp_path / "e", BUILD, device="cpu")

    ours = _engine_weights(tmp_path / "e")
    for i, layer in enumerate(reference.model.layers):
        for fused, parts in FUSED.items():
            want = torch.cat([layer.get_submodule(p).weight.detach() for p in parts])
            assert torch.equal(ours[f"{i}.{fused}"], want), f"layer {i} {fused}"
    with torch.no_grad():
        expected = reference(torch.tensor([PROMPT])).logits[0]
        unquantized = hf_model(torch.tensor([PROMPT])).logits[0]
    _check_logits(_ingot_logits(tmp_path / "e", PROMPT), expected, unquantized)
    _check_record(tmp_path / "e", "compressed-tensors", scaling, capsys)


def _check_logits(ours: torch.Tensor, expected: torch.Tensor, unquantized: torch.Tensor) -> None:
    """Equal up to fp32 rounding, token by token, except where an activation sits on an E4M3
    rounding boundary and the last-bit difference of the two matmul orders rounds it the other way
    (seen on 1 of 23 tokens: 7e-4 against an FP8 error of 3e-2)."""
    fp8_error = (expected - unquantized).abs().max().item()
    per_token = (ours - expected).abs().amax(-1)
    assert fp8_error > 1e-3, "the scheme must change the logits, or this compares nothing"
    assert (per_token < 1e-5).float().mean() >= 0.9 and per_token.max() < 0.1 * fp8_error, (per_token, fp8_error)


def _check_record(engine_dir, imported_from: str, scaling: str, capsys) -> None:
    from ingot.commands.inspect import run as inspect

    quant = json.loads((engine_dir / ENGINE_JSON).read_text())["quantization"]
    assert quant["method"] == "fp8" and quant["params"]["scaling"] == scaling
    assert quant["params"]["prequantized"] is True and quant["params"]["imported_from"] == imported_from
    assert inspect(argparse.Namespace(engine=str(engine_dir), json=False)) == 0
    out = capsys.readouterr().out
    assert f"pre-quantized fp8 weights in the {imported_from} format" in out
    assert f"fp8 scales     rank0.safetensors (read from the {imported_from} checkpoint)" in out


def test_fp8_format_per_tensor_weights_with_dynamic_activations(base, tmp_path, capsys):
    """transformers' spelling (weight_scale_inv, one per tensor); dynamic activations run per token,
    as transformers' own FP8 runtime does, and the one weight scale is repeated on every row."""
    base_dir, hf_model = base
    reference, tensors = copy.deepcopy(hf_model), {}
    for name, tensor in hf_model.state_dict().items():
        module = name.removesuffix(".weight")
        if ".layers." not in name or not name.endswith("proj.weight"):
            tensors[name] = tensor
            continue
        scale = tensor.abs().amax() / 448
        tensors[name], tensors[f"{module}.weight_scale_inv"] = _e4m3(tensor, scale), scale.reshape(())
        reference.get_submodule(module).weight.data = tensors[name].float() * scale
        reference.get_submodule(module).register_forward_pre_hook(
            lambda m, args: (_e4m3(args[0], args[0].abs().amax(-1, keepdim=True) / 448).float()
                             * (args[0].abs().amax(-1, keepdim=True) / 448),))
    checkpoint = tmp_path / "fp8"
    checkpoint.mkdir()
    config = json.loads((base_dir / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3",
                                     "weight_block_size": None, "modules_to_not_convert": ["lm_head"]}
    (checkpoint / "config.json").write_text(json.dumps(config))
    _copy_tokenizer(base_dir, checkpoint)
    save_file(tensors, str(checkpoint / "model.safetensors"))
    build_engine(str(checkpoint), tmp_path / "e", BUILD, device="cpu")

    ours = _engine_weights(tmp_path / "e")
    for i, layer in enumerate(reference.model.layers):
        for fused, parts in FUSED.items():
            assert torch.equal(ours[f"{i}.{fused}"], torch.cat([layer.get_submodule(p).weight.detach() for p in parts]))
    with torch.no_grad():
        expected = reference(torch.tensor([PROMPT])).logits[0]
        unquantized = hf_model(torch.tensor([PROMPT])).logits[0]
    _check_logits(_ingot_logits(tmp_path / "e", PROMPT), expected, unquantized)
    _check_record(tmp_path / "e", "fp8", "per_channel", capsys)


def test_fused_per_tensor_parts_share_the_largest_scale():
    """vLLM's rule, in the vLLM/AutoFP8 spelling (input_scale) and transformers' (activation_scale)."""
    fmt = Fp8Format("fp8", "per_tensor", "weights per tensor, activations static per tensor")
    g = torch.Generator().manual_seed(0)
    values = {p: torch.randn(4, 8, generator=g) for p in ("gate_proj", "up_proj")}
    scales = {"gate_proj": torch.tensor(0.01), "up_proj": torch.tensor(0.03)}
    tensors = []
    for proj in ("up_proj", "gate_proj"):  # any order
        prefix = f"model.layers.0.mlp.{proj}"
        tensors += [(f"{prefix}.weight", _e4m3(values[proj], scales[proj])), (f"{prefix}.weight_scale", scales[proj]),
                    (f"{prefix}.{'input_scale' if proj == 'up_proj' else 'activation_scale'}",
                     torch.tensor([0.5 if proj == "up_proj" else 0.25]))]
    out = dict(import_tensors(fmt, iter(tensors)))
    assert out["model.layers.0.mlp.gate_up_proj.weight_scale"].item() == pytest.approx(0.03)
    assert out["model.layers.0.mlp.gate_up_proj.input_scale"].tolist() == [0.5]
    assert torch.equal(out["model.layers.0.mlp.up_proj.weight"], _e4m3(values["up_proj"], scales["up_proj"]))
    gate = _e4m3(values["gate_proj"], scales["gate_proj"]).float() * 0.01
    assert torch.equal(out["model.layers.0.mlp.gate_proj.weight"], _e4m3(gate, torch.tensor(0.03)))


def _ct(weights: dict, inputs: dict | None, **extra) -> dict:
    w = {"num_bits": 8, "type": "float", "symmetric": True, "dynamic": False, **weights}
    a = None if inputs is None else {"num_bits": 8, "type": "float", "symmetric": True, **inputs}
    return {"quant_method": "compressed-tensors", "format": "float-quantized", "ignore": ["lm_head"],
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": w, "input_activations": a}}, **extra}


@pytest.mark.parametrize("config,message", [
    ({"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [128, 128]},
     r"quantization_config\.weight_block_size: \[128, 128\] means block-wise FP8 .* build the model's unquantized "
     r"checkpoint with --quant fp8"),
    (_ct({"strategy": "block", "block_structure": [128, 128]},
         {"strategy": "group", "group_size": 128, "dynamic": True}),
     r"config_groups\.group_0\.weights\.strategy: 'block' is not run"),
    (_ct({"strategy": "channel"}, None), r"config_groups\.group_0\.input_activations: null means weight-only FP8"),
    (_ct({"strategy": "channel"}, {"strategy": "tensor", "dynamic": False}),
     r"config_groups\.group_0\.input_activations: strategy 'tensor' with dynamic False and weights per channel"),
    (_ct({"strategy": "tensor"}, {"strategy": "tensor", "dynamic": True}),
     r"config_groups\.group_0\.input_activations: strategy 'tensor' with dynamic True"),
    ({**_ct({"strategy": "channel"}, {"strategy": "token", "dynamic": True}), "format": "dense"},
     r"quantization_config\.format: 'dense' is not read for FP8"),
])
def test_schemes_ingot_cannot_run_exactly_are_refused_naming_the_field(config, message):
    with pytest.raises(CheckpointError, match=message):
        detect({"quantization_config": config}, "ckpt")


def test_a_block_linear_left_unquantized_is_refused():
    fmt = Fp8Format("compressed-tensors", "per_channel", "weights per channel, activations dynamic per token")
    tensors = iter([("model.layers.0.mlp.down_proj.weight", torch.zeros(4, 8))])
    with pytest.raises(CheckpointError, match=r"model\.layers\.0\.mlp\.down_proj\.weight is torch\.float32 with no "
                                              r"weight_scale: .*quantization_config\.ignore"):
        list(import_tensors(fmt, tensors))


def test_kv_cache_scales_and_zero_points_are_skipped():
    config = {"quant_method": "fp8", "activation_scheme": "dynamic", "kv_cache_scheme": "static"}
    fmt = detect({"quantization_config": config}, "ckpt")
    assert fmt.quant_config().params["checkpoint_kv_scales"] == "skipped: the KV cache is stored in the model dtype"
    tensors = [("model.layers.0.self_attn.k_scale", torch.tensor(0.1)), ("model.norm.weight", torch.ones(2)),
               ("model.layers.0.mlp.down_proj.weight_zero_point", torch.zeros(1))]  # symmetric: zeros, skipped
    assert [name for name, _ in import_tensors(fmt, iter(tensors))] == ["model.norm.weight"]
