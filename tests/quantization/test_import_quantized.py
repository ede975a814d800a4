"""Checkpoints quantized elsewhere, read into ingot's INT4 layout without re-quantizing:
compressed-tensors pack-quantized (made by the compressed-tensors library itself), AutoAWQ gemm and
GPTQ (written here from the formats' published descriptions: no CPU writer exists on PyPI). Each
imported weight equals its format's own dequantization exactly; the engines generate."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from ingot.builder.build import build_engine
from ingot.config import BuildConfig
from ingot.engine_format import ENGINE_JSON
from ingot.llm import LLM
from ingot.sampling_params import SamplingParams
from tests.tiny_models import make_checkpoint

BUILD = BuildConfig(dtype="fp32", max_batch_size=4, max_input_len=32, max_seq_len=64, max_num_tokens=32,
                    tokens_per_block=8)
GROUP = 32
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
           "mlp.up_proj", "mlp.down_proj")
SHARED_INPUT = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "gate_proj": "gate_up", "up_proj": "gate_up"}
FUSED = {"self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
         "self_attn.o_proj": ("self_attn.o_proj",), "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
         "mlp.down_proj": ("mlp.down_proj",)}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny Llama saved by transformers, its weights and config."""
    directory = tmp_path_factory.mktemp("base")
    model = make_checkpoint(directory, "LlamaForCausalLM", seed=31, hidden_size=64, num_attention_heads=8,
                            num_key_value_heads=2, intermediate_size=128, num_hidden_layers=2)
    return directory, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _write(directory, base_dir, tensors: dict, quantization_config: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    config = json.loads((base_dir / "config.json").read_text())
    config["quantization_config"] = quantization_config
    (directory / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (directory / name).write_bytes((base_dir / name).read_bytes())
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / "model.safetensors"))


def _engine_weights(engine_dir) -> dict[str, torch.Tensor]:
    """Each fused linear layer's weight as the INT4 engine dequantizes it, per layer."""
    model = LLM(engine_dir, device="cpu").engine.model
    return {f"{i}.{name}": model.layers[str(i)].get_submodule(name).method.dequantized
            for i in range(2) for name in FUSED}


def _check(engine_dir, reference: dict[str, torch.Tensor], imported_from: str, act_order=False) -> None:
    """reference: HF name (model.layers.i.proj) -> the format's own dequantized weight."""
    quant = json.loads((engine_dir / ENGINE_JSON).read_text())["quantization"]
    assert quant["method"] == "int4_checkpoint" and quant["params"] == {
        "group_size": GROUP, "act_order": act_order, "imported_from": imported_from}
    ours = _engine_weights(engine_dir)
    for i in range(2):
        for fused, parts in FUSED.items():
            want = torch.cat([reference[f"model.layers.{i}.{p}"] for p in parts])
            assert torch.equal(ours[f"{i}.{fused}"], want.to(torch.float32)), f"layer {i} {fused}"
    llm = LLM(engine_dir, device="cpu")
    (out,) = llm.generate(["abc"], SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True))
    assert len(out.token_ids) == 6


def test_compressed_tensors_pack_quantized_made_by_the_library(base, tmp_path):
    ct = pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme
    from compressed_tensors.quantization.utils.helpers import calculate_qparams

    base_dir, weights = base
    args = QuantizationArgs(num_bits=4, type="int", symmetric=False, strategy="group", group_size=GROUP)
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    tensors, reference = {}, {}
    for name, tensor in weights.items():
        module = name.removesuffix(".weight")
        if not any(module.endswith(linear) for linear in LINEARS):
            tensors[name] = tensor
            continue
        groups = tensor.view(tensor.shape[0], -1, GROUP)
        scale, zero_point = calculate_qparams(groups.amin(-1), groups.amax(-1), args)
        packed = PackedQuantizationCompressor.compress(
            {"weight": tensor, "weight_scale": scale, "weight_zero_point": zero_point}, scheme)
        tensors.update({f"{module}.{key}": value for key, value in packed.items()})
        reference[module] = PackedQuantizationCompressor.decompress(dict(packed), scheme)["weight"]
    config = QuantizationConfig(config_groups={"group_0": scheme}, format="pack-quantized", ignore=["lm_head"])
    _write(tmp_path / "ct", base_dir, tensors, config.model_dump(mode="json", exclude_none=True))
    build_engine(str(tmp_path / "ct"), tmp_path / "engine", BUILD, device="cpu")
    _check(tmp_path / "engine", reference, "compressed-tensors")
    assert ct.__version__


def _pack_along_n(codes: torch.Tensor, order) -> torch.Tensor:
    """(R, N) codes -> (R, N/8) int32, nibble i of word j = column 8j + order[i] (the formats' description)."""
    rows, n = codes.shape
    words = torch.zeros(rows, n // 8, dtype=torch.int64)
    for j in range(n // 8):
        for i in range(8):
            words[:, j] |= codes[:, 8 * j + order[i]].long() << (4 * i)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def _random_int4(n: int, k: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (k, n), generator=g)  # (K, N): these formats store W transposed
    zeros = torch.randint(0, 16, (k // GROUP, n), generator=g)
    scales = (torch.rand((k // GROUP, n), generator=g) * 0.02 + 0.001)
    return codes, zeros, scales


def test_autoawq_gemm_format(base, tmp_path):
    base_dir, weights = base
    order = (0, 2, 4, 6, 1, 3, 5, 7)
    tensors, reference = {}, {}
    for index, (name, tensor) in enumerate(weights.items()):
        module = name.removesuffix(".weight")
        if not any(module.endswith(linear) for linear in LINEARS):
            tensors[name] = tensor
            continue
        n, k = tensor.shape
        codes, zeros, scales = _random_int4(n, k, index)
        tensors.update({f"{module}.qweight": _pack_along_n(codes, order), f"{module}.qzeros": _pack_along_n(zeros, order),
                        f"{module}.scales": scales.half()})
        group = torch.arange(k) // GROUP
        reference[module] = ((codes - zeros[group]) * scales.half().float()[group]).T
    _write(tmp_path / "awq", base_dir, tensors, {"quant_method": "awq", "bits": 4, "group_size": GROUP,
                                                 "version": "gemm", "zero_point": True})
    build_engine(str(tmp_path / "awq"), tmp_path / "engine", BUILD, device="cpu")
    _check(tmp_path / "engine", reference, "autoawq")


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_format_with_its_zero_offset_and_group_index(base, tmp_path, act_order):
    base_dir, weights = base
    tensors, reference = {}, {}
    shuffles: dict[str, torch.Tensor] = {}
    for index, (name, tensor) in enumerate(weights.items()):
        module = name.removesuffix(".weight")
        if not any(module.endswith(linear) for linear in LINEARS):
            tensors[name] = tensor
            continue
        n, k = tensor.shape
        codes, zeros, scales = _random_int4(n, k, index)
        zeros = zeros.clamp(min=1)  # the original format stores zero - 1
        g_idx = torch.arange(k) // GROUP
        if act_order:  # one column order per input: q/k/v and gate/up share theirs
            layer, proj = module.rsplit(".", 1)
            key = f"{layer}.{SHARED_INPUT.get(proj, proj)}"
            g_idx = g_idx[shuffles.setdefault(key, torch.randperm(k, generator=torch.Generator().manual_seed(k)))]
        packed_rows = torch.zeros(k // 8, n, dtype=torch.int64)
        for i in range(8):
            packed_rows |= codes[i::8].long() << (4 * i)
        tensors.update({f"{module}.qweight": torch.where(packed_rows >= 2**31, packed_rows - 2**32, packed_rows).int(),
                        f"{module}.qzeros": _pack_along_n(zeros - 1, tuple(range(8))),
                        f"{module}.scales": scales.half(), f"{module}.g_idx": g_idx.int()})
        reference[module] = ((codes - zeros[g_idx]) * scales.half().float()[g_idx]).T
    _write(tmp_path / "gptq", base_dir, tensors, {"quant_method": "gptq", "bits": 4, "group_size": GROUP,
                                                  "desc_act": act_order, "sym": False})
    build_engine(str(tmp_path / "gptq"), tmp_path / "engine", BUILD, device="cpu")
    _check(tmp_path / "engine", reference, "gptq", act_order)


def test_a_quantized_checkpoint_refuses_a_second_quantization(base, tmp_path):
    from ingot.config import QuantConfig
    from ingot.errors import ConfigError

    base_dir, weights = base
    _write(tmp_path / "q", base_dir, weights, {"quant_method": "awq", "bits": 4, "group_size": GROUP, "version": "gemm"})
    with pytest.raises(ConfigError, match=r"is quantized already \(autoawq, group 32\); build it without --quant int4_rtn"):
        build_engine(str(tmp_path / "q"), tmp_path / "e", BUILD, device="cpu", quant=QuantConfig("int4_rtn"))
