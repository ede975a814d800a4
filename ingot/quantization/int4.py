"""INT4 weight-only schemes: round-to-nearest (the baseline), AWQ and GPTQ.

Every linear layer of the decoder blocks is stored in ingot's INT4 layout (int4_format.py); the
embedding, the lm_head and the norms stay in the model dtype. The schemes differ only in how the
builder chooses the codes: RTN maps each weight on its own; AWQ and GPTQ look at what the layer
is fed, on calibration text, layer after layer (calibration.py).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch

from ingot.errors import ConfigError
from ingot.quantization.base import LinearMethod, QuantScheme, Tensors
from ingot.quantization.int4_format import round_to_nearest
from ingot.quantization.int4_method import Int4LinearMethod
from ingot.quantization.unquantized import UnquantizedLinearMethod

GROUP_SIZES = (32, 64, 128)
DEFAULT_GROUP_SIZE = 128
QUANTIZED_LINEARS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


def is_quantized_linear(engine_name: str) -> bool:
    """layers.{i}.{module}.{proj}.weight of a block linear layer."""
    parts = engine_name.split(".")
    return parts[0] == "layers" and parts[-1] == "weight" and parts[-2] in QUANTIZED_LINEARS


class Int4Scheme(QuantScheme):
    """The shared runtime side and parameters; subclasses choose the codes."""

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        super().__init__(params)
        self.group_size = int(self.params.get("group_size", DEFAULT_GROUP_SIZE))
        if self.group_size not in GROUP_SIZES:
            raise ConfigError(f"--group-size {self.group_size} is not supported; use one of "
                              f"{', '.join(map(str, GROUP_SIZES))}")

    def linear_method(self, prefix: str) -> LinearMethod:
        if prefix.rsplit(".", 1)[-1] in QUANTIZED_LINEARS:
            return Int4LinearMethod(self.group_size)
        return UnquantizedLinearMethod()  # the lm_head keeps the model dtype

    def describe(self) -> str:
        return f"{self.name}: INT4 weights of the block linear layers, group {self.group_size}, asymmetric, " \
               "activations in the model dtype; embedding, lm_head and norms in the model dtype"

    def check_layout(self, model, tp: int) -> None:
        """Row-parallel layers (o, down) split their inputs: each rank's share must hold whole groups."""
        if tp == 1:
            return
        if self.params.get("act_order"):
            raise ConfigError("--act-order reorders each layer's whole input; it cannot be split: build with --tp 1")
        for name, inputs in (("o_proj", model.q_size), ("down_proj", model.intermediate_size)):
            if (inputs // tp) % self.group_size:
                raise ConfigError(f"--tp {tp} gives each rank {inputs // tp} of {name}'s {inputs} inputs, not a "
                                  f"multiple of --group-size {self.group_size}; choose a group size or tp that divides it")

    def _stored(self, name: str, tensor: torch.Tensor, qweight, scales, zeros) -> Tensors:
        base = name.removesuffix(".weight")
        yield f"{base}.qweight", qweight
        yield f"{base}.scales", scales
        yield f"{base}.zeros", zeros


class Int4Rtn(Int4Scheme):
    name = "int4_rtn"

    def quantize(self, tensors: Tensors, context=None) -> Tensors:
        for name, tensor in tensors:
            if is_quantized_linear(name):
                yield from self._stored(name, tensor, *round_to_nearest(tensor, self.group_size, tensor.dtype))
            else:
                yield name, tensor


class Int4Checkpoint(Int4Scheme):
    """A checkpoint that was quantized elsewhere (AutoAWQ, GPTQ, compressed-tensors): the builder
    reads its tensors into ingot's layout (ingot/builder/quantized_checkpoints.py); nothing to do here."""

    name = "int4_checkpoint"
    imports = True

    def linear_method(self, prefix: str) -> LinearMethod:
        method = super().linear_method(prefix)
        if isinstance(method, Int4LinearMethod):
            method.act_order = bool(self.params.get("act_order"))
        return method

    def describe(self) -> str:
        return super().describe().replace(self.name, f"{self.name} (from {self.params.get('imported_from')})", 1)


class _Calibrated(Int4Scheme):
    """AWQ and GPTQ: quantize block by block on calibration samples (calibration.py), the blocks
    before as already quantized; the model runs in float32 on the build device for the search."""

    needs_calibration = True

    def quantize(self, tensors: Tensors, context=None) -> Tensors:
        from ingot.quantization.calibration import BlockRunner, quantize_blocks

        if context is None:
            raise ConfigError(f"--quant {self.name} calibrates on a text: pass --calib-data FILE")
        weights = dict(tensors)
        model = context.float_model(weights)
        runner = BlockRunner(model, context.calibration.samples, context.device)
        stored: dict[str, torch.Tensor] = {}
        quantize_blocks(runner, dict(model.layers.items()),
                        lambda index, block: stored.update(self.quantize_block(index, block, runner, context)),
                        f"{self.name} calibration")
        state = model.state_dict()
        for name, tensor in weights.items():
            if is_quantized_linear(name):
                base = name.removesuffix(".weight")
                yield from ((key, stored[key]) for key in stored if key.rsplit(".", 1)[0] == base)
            else:
                yield name, state[name].to(tensor.dtype)  # norms may carry folded AWQ scales

    @abstractmethod
    def quantize_block(self, index: str, block, runner, context) -> dict[str, torch.Tensor]:
        """Quantize the linear layers of one block (modifying it in place); their stored tensors."""

    def _store(self, index: str, name: str, block, qweight, scales, zeros, perm=None) -> dict[str, torch.Tensor]:
        """Record the stored tensors and put the weight they stand for into the block, so the samples
        reach the next block through the quantized one."""
        from ingot.quantization.int4_format import dequantize

        linear = block.get_submodule(name)
        weight = dequantize(qweight, scales, zeros, linear.weight.shape[1], self.group_size, torch.float32)
        if perm is not None:
            weight = weight[:, torch.argsort(perm.long())]
        linear.weight.data.copy_(weight)
        base = f"layers.{index}.{name}"
        out = {f"{base}.qweight": qweight.cpu(), f"{base}.scales": scales.cpu(), f"{base}.zeros": zeros.cpu()}
        if perm is not None:
            out[f"{base}.perm"] = perm.cpu()
        return out


class Int4Gptq(_Calibrated):
    name = "int4_gptq"

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        super().__init__(params)
        self.act_order = bool(self.params.get("act_order", False))

    def linear_method(self, prefix: str) -> LinearMethod:
        method = super().linear_method(prefix)
        if isinstance(method, Int4LinearMethod):
            method.act_order = self.act_order
        return method

    def quantize_block(self, index: str, block, runner, context) -> dict[str, torch.Tensor]:
        from ingot.quantization.gptq import gptq_quantize

        names = _linear_names(block)
        inputs = runner.capture(block, names, want_hessian=True)
        stored = {}
        for name in names:
            weight = block.get_submodule(name).weight.data
            stored.update(self._store(index, name, block, *gptq_quantize(
                weight, inputs[name].hessian, self.group_size, context.dtype, act_order=self.act_order)))
        return stored


class Int4Awq(_Calibrated):
    name = "int4_awq"

    def quantize_block(self, index: str, block, runner, context) -> dict[str, torch.Tensor]:
        from ingot.quantization.awq import awq_quantize, search_scales

        names = _linear_names(block)
        inputs = {name: captured.x for name, captured in runner.capture(block, names, want_hessian=False).items()}
        for name, fold in _scaling_groups(block):
            linear = block.get_submodule(name)
            scales = search_scales([linear.weight.data], inputs[name], self.group_size)
            linear.weight.data.mul_(scales)
            fold(scales)
            inputs[name] = inputs[name] / scales
        stored = {}
        for name in names:
            qweight, scales, zeros = awq_quantize(block.get_submodule(name).weight.data, inputs[name],
                                                  self.group_size, context.dtype)
            stored.update(self._store(index, name, block, qweight, scales, zeros))
        return stored


def _linear_names(block) -> list[str]:
    return ["self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"]


def _scaling_groups(block):
    """(linear, fold) pairs of a Llama-family block: fold(s) divides by s what produces the linear's
    input (an RMSNorm's weight, or output rows of the linear before), so the scaled block computes
    the same function. o_proj is scaled only when it reads v's rows one to one (no grouped KV heads)."""
    attention, mlp = block.self_attn, block.mlp
    groups = [("self_attn.qkv_proj", lambda s: block.input_layernorm.weight.data.div_(s))]
    if attention.num_heads == attention.num_kv_heads:
        v_rows = slice(attention.q_size + attention.kv_size, attention.q_size + 2 * attention.kv_size)
        groups.append(("self_attn.o_proj", lambda s: _divide_rows(attention.qkv_proj, v_rows, s)))
    groups.append(("mlp.gate_up_proj", lambda s: block.post_attention_layernorm.weight.data.div_(s)))
    up_rows = slice(mlp.gate_up_proj.weight.shape[0] // 2, None)
    groups.append(("mlp.down_proj", lambda s: _divide_rows(mlp.gate_up_proj, up_rows, s)))
    return groups


def _divide_rows(linear, rows: slice, s: torch.Tensor) -> None:
    linear.weight.data[rows] /= s.unsqueeze(1)
    if linear.bias is not None:
        linear.bias.data[rows] /= s
