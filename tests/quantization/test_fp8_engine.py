"""FP8 engines end to end on a tiny random model: built with each scaling mode, ingot's CPU
emulation gives the logits of a straightforward reference of the same scheme (transformers' model
with every block linear replaced by a dequantize-then-matmul FP8 linear); the engine records the
method, its scales and the calibration set, and `ingot inspect` prints them."""

from __future__ import annotations

import argparse
import json
import re

import pytest
import torch
from safetensors import safe_open
from torch import nn

from ingot.builder.build import build_engine
from ingot.config import BuildConfig, QuantConfig
from ingot.engine_format import ENGINE_JSON
from ingot.errors import ConfigError
from ingot.quantization.calibration import text_samples
from ingot.runtime.engine import LLMEngine
from ingot.sampling_params import SamplingParams
from ingot.tokenizer import Tokenizer
from tests.helpers_data import hamlet_path

BUILD = BuildConfig(dtype="fp32", max_batch_size=4, max_input_len=64, max_seq_len=128, max_num_tokens=64,
                    tokens_per_block=8)
CALIB = {"calib_size": 3, "calib_seq_len": 48}
FUSED = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "gate_proj": "gate_up", "up_proj": "gate_up"}


def _e4m3(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x through E4M3 at `scale`, back in float32: torch's cast, saturated."""
    return (x / scale).clamp(-448, 448).to(torch.float8_e4m3fn).float() * scale


class ReferenceFp8Linear(nn.Module):
    def __init__(self, linear: nn.Linear, weight_amax: torch.Tensor | None, input_amax: torch.Tensor | None) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        # per_channel: a scale per output row; per_tensor: the fused group's shared maximum
        self.w = _e4m3(w, (w.abs().amax(1, keepdim=True) if weight_amax is None else weight_amax) / 448)
        self.bias, self.input_amax = linear.bias, input_amax

    def forward(self, x):
        amax = x.abs().amax(-1, keepdim=True) if self.input_amax is None else self.input_amax
        y = _e4m3(x, amax / 448) @ self.w.T
        return y if self.bias is None else y + self.bias


def _block_linears(hf_model):
    for layer in hf_model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, child in parent.named_children():
                if isinstance(child, nn.Linear):
                    yield layer, parent, name, child


def _input_amax(hf_model, samples) -> dict[int, torch.Tensor]:
    """The largest |x| each linear was fed on the calibration samples, each run alone."""
    amax: dict[int, torch.Tensor] = {}

    def record(module, args):
        amax[id(module)] = torch.maximum(amax.get(id(module), torch.tensor(0.0)), args[0].abs().amax())

    hooks = [linear.register_forward_pre_hook(record) for *_, linear in _block_linears(hf_model)]
    with torch.no_grad():
        for sample in samples:
            hf_model(torch.tensor([sample]))
    for hook in hooks:
        hook.remove()
    return amax


def _reference_model(hf_model, scaling: str, samples):
    import copy

    model = copy.deepcopy(hf_model)
    amax = _input_amax(model, samples) if scaling == "per_tensor" else {}
    shared: dict[tuple[int, str], torch.Tensor] = {}  # (layer, fused group) -> the largest |w| of its parts
    for layer, parent, name, linear in _block_linears(model):
        key = (id(layer), FUSED.get(name, name))
        shared[key] = torch.maximum(shared.get(key, torch.tensor(0.0)), linear.weight.detach().abs().amax())
    for layer, parent, name, linear in list(_block_linears(model)):
        per_tensor = scaling == "per_tensor"
        setattr(parent, name, ReferenceFp8Linear(linear, shared[(id(layer), FUSED.get(name, name))] if per_tensor else None,
                                                 amax[id(linear)] if per_tensor else None))
    return model


def _ingot_logits(engine_dir, prompt: list[int]) -> torch.Tensor:
    engine = LLMEngine(engine_dir, device="cpu")
    request = engine.add_request(prompt, SamplingParams(max_tokens=1))
    inputs = engine.runner.prepare(engine.scheduler.schedule())
    with torch.inference_mode():
        hidden = engine.model(inputs.input_ids, inputs.positions, engine.pool.layers, inputs.metadata)
        logits = engine.model.compute_logits(hidden)
    engine.abort_request(request.request_id)
    return logits


@pytest.fixture(scope="module")
def calib_text(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "calib.md"
    path.write_text(hamlet_path().read_text(encoding="utf-8")[:5_000], encoding="utf-8")
    return path


@pytest.mark.parametrize("scaling", ["per_channel", "per_tensor"])
def test_fp8_logits_equal_a_reference_of_the_scheme(tiny_checkpoint, calib_text, tmp_path, scaling, capsys):
    directory, hf_model = tiny_checkpoint
    params = {"scaling": scaling, **({"calib_data": str(calib_text), **CALIB} if scaling == "per_tensor" else {})}
    build_engine(str(directory), tmp_path / "e", BUILD, device="cpu", quant=QuantConfig("fp8", params))
    samples = text_samples(calib_text, Tokenizer.from_dir(directory), CALIB["calib_size"], CALIB["calib_seq_len"])
    prompt = torch.randint(0, 311, (29,), generator=torch.Generator().manual_seed(3)).tolist()
    ours = _ingot_logits(tmp_path / "e", prompt)
    with torch.no_grad():
        reference = _reference_model(hf_model, scaling, samples.samples)(torch.tensor([prompt])).logits[0]
        unquantized = hf_model(torch.tensor([prompt])).logits[0]
    fp8_error = (reference - unquantized).abs().max().item()
    ours_error = (ours - reference).abs().max().item()
    assert fp8_error > 1e-3, "the scheme must change the logits, or this test compares nothing"
    assert ours_error < 0.01 * fp8_error, (ours_error, fp8_error)  # measured: ~2e-7 against ~3e-2
    _check_record_and_inspect(tmp_path / "e", scaling, capsys)


def _check_record_and_inspect(engine_dir, scaling: str, capsys) -> None:
    from ingot.commands.inspect import run as inspect

    spec = json.loads((engine_dir / ENGINE_JSON).read_text())["quantization"]
    assert spec["method"] == "fp8" and spec["params"]["scaling"] == scaling
    assert inspect(argparse.Namespace(engine=str(engine_dir), json=False)) == 0
    out = capsys.readouterr().out
    assert "quantization fp8: E4M3 weights and activations" in out
    if scaling == "per_tensor":
        assert spec["params"]["calibration"]["num_samples"] == 3 and spec["params"]["calibration"]["seq_len"] == 48
        assert "fp8 scales     rank0.safetensors (calibrated on calib.md (sha256 " in out
        assert re.search(r"layers\.1\.self_attn\.qkv_proj +weight [0-9.e-]+, input [0-9.e-]+ \(static\)", out)
    else:
        assert "fp8 scales     rank0.safetensors (no calibration):" in out
        assert re.search(r"layers\.0\.mlp\.gate_up_proj +weight [0-9.e-]+\.\.[0-9.e-]+ over 200 channels, "
                         r"input per token \(dynamic\)", out)
    with safe_open(str(engine_dir / "rank0.safetensors"), framework="pt") as f:
        assert f.get_slice("layers.0.mlp.down_proj.weight").get_dtype() == "F8_E4M3"
        assert f.get_slice("lm_head.weight").get_dtype() == "F32"  # lm_head and embedding keep the model dtype
        assert f.get_slice("embed_tokens.weight").get_dtype() == "F32"


@pytest.mark.parametrize("argv,message", [
    (["--fp8-scaling", "per_tensor"], r"--fp8-scaling per_tensor applies to --quant fp8 only \(this build has --quant "
                                      r"none\): add --quant fp8 or drop --fp8-scaling"),
    (["--quant", "fp8", "--calib-data", "x.txt"], r"--calib-data calibrates static activation scales, which only "
                                                  r"--fp8-scaling per_tensor has"),
    (["--quant", "fp8", "--fp8-scaling", "per_tensor"], r"--quant fp8 --fp8-scaling per_tensor calibrates on a text: "
                                                        r"pass --calib-data FILE"),
])
def test_fp8_flags_refused_with_the_fix(tiny_checkpoint, tmp_path, argv, message):
    from ingot.commands.build import build_options, make_build_parser

    args = make_build_parser().parse_args([str(tiny_checkpoint[0]), "-o", str(tmp_path / "e"), *argv])
    with pytest.raises(ConfigError, match=message):
        build_engine(args.model, args.output, **build_options(args))
