"""The planner's weight memory is what `ingot build` writes: a small Llama planned, then built on
CPU with random weights by the printed command itself, and the rank files weighed.

The planner counts the block linear layers at Precision.weight_bytes (INT4: 4 bits plus a bf16
scale and a uint8 zero point per group of 128; FP8: 1 byte) plus Precision.row_scale_bytes per output
row (FP8 per_channel, `ingot build --quant fp8`'s default: a float32 (out, 1) scale per layer), and the
embedding and lm_head at 2 bytes; norms (0.06% here) and the safetensors headers (a few kB) are what
the 1% allows for. The 1% alone would not tell a 4-bit zero point from ingot's uint8 one (0.4% of
this engine) nor see FP8's scales (0.4%), so the matrices are also held to the byte: every input
width here is a multiple of 128, and the norms are the only vectors.
"""

from __future__ import annotations

import json
import shlex

import pytest
from safetensors.torch import load_file

from ingot.commands.build import make_build_parser
from ingot.commands.build import run as ingot_build
from ingot.plan.memory import Layout, total_weight_bytes, weight_bytes_per_rank
from ingot.plan.planner import make_plan
from ingot.plan.precisions import PRECISIONS
from ingot.plan.presets import resolve_model
from ingot.quantization import awq

# 4 layers of hidden 512, GQA 8/2 heads of 64, SwiGLU 1536: 12.1M block weights, 4.2M in the two
# vocab-4096 tables, so the tables (never quantized) and the blocks both weigh in.
TINY_LLAMA = {"architectures": ["LlamaForCausalLM"], "vocab_size": 4096, "hidden_size": 512,
              "intermediate_size": 1536, "num_hidden_layers": 4, "num_attention_heads": 8,
              "num_key_value_heads": 2, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
              "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
# What the printed command is run with besides its own flags: random weights at the config's
# shapes on CPU, and (AWQ) two calibration samples of 32 random tokens instead of 128 x 512.
TEST_FLAGS = ["--load-format", "dummy", "--device", "cpu", "--calib-size", "2", "--calib-seq-len", "32"]


@pytest.mark.parametrize("precision", ["int4_awq", "bf16", "fp8"])
def test_planned_weights_match_the_built_engine(tmp_path, monkeypatch, precision):
    checkpoint = tmp_path / "tiny-llama"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps(TINY_LLAMA))
    plan = make_plan(model=str(checkpoint / "config.json"), gpu="h100", precision=precision,
                     isl=64, osl=64, concurrency=4, num_gpus=1)
    layout = plan["recommendation"]["layout"]
    # The plan dict rounds to 10 MB; the exact bytes come from the functions that fill it.
    shape, _ = resolve_model(str(checkpoint / "config.json"))
    planned = weight_bytes_per_rank(shape, PRECISIONS[precision], Layout(layout["tp"], layout["pp"]))
    assert layout["memory_gb"]["weights"] == round(planned / 1e9, 2)
    assert plan["weights_gb"] == round(total_weight_bytes(shape, PRECISIONS[precision]) / 1e9, 2)

    monkeypatch.chdir(tmp_path)  # the command writes engines/NAME and names ./calibration.txt
    # AWQ tries 20 scale and 20 clipping candidates per layer (tens of seconds on 2 CPU cores);
    # what it stores, and so its size, does not depend on how many.
    monkeypatch.setattr(awq, "ALPHA_GRID", 2)
    monkeypatch.setattr(awq, "CLIP_GRID", 2)
    words = shlex.split(plan["recommendation"]["build_command"])
    args = make_build_parser().parse_args(words[2:] + TEST_FLAGS)
    assert args.quant == ("none" if precision == "bf16" else precision) and args.group_size is None
    assert ingot_build(args) == 0
    [rank_file] = (tmp_path / args.output).glob("rank*.safetensors")
    built = rank_file.stat().st_size
    assert abs(planned - built) <= 0.01 * built, (planned, built)
    matrices = sum(t.numel() * t.element_size() for t in load_file(rank_file).values() if t.dim() == 2)
    assert matrices == planned  # qweight, scales, zeros (or bf16 or fp8 weights, fp8 scales), embedding, lm_head


def test_planned_fp8_kv_cache_matches_the_built_engine(tmp_path, monkeypatch):
    """--kv-cache-dtype fp8: the printed command builds (its scales calibrated, here on random
    tokens of the dummy weights) an engine whose pool takes the planned bytes per token, half bf16's."""
    import torch

    from ingot.config import CacheConfig
    from ingot.engine_format import read_spec
    from ingot.runtime.kv_sizing import plan_pool

    checkpoint = tmp_path / "tiny-llama"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps(TINY_LLAMA))
    plan = make_plan(model=str(checkpoint / "config.json"), gpu="h100", precision="bf16", kv_cache_dtype="fp8",
                     isl=64, osl=64, concurrency=4, num_gpus=1)
    monkeypatch.chdir(tmp_path)
    words = shlex.split(plan["recommendation"]["build_command"])
    args = make_build_parser().parse_args(words[2:] + TEST_FLAGS)
    assert (args.kv_cache_dtype, args.calib_data) == ("fp8", "./calibration.txt")
    assert ingot_build(args) == 0
    spec = read_spec(tmp_path / args.output)
    assert spec.kv_dtype == "fp8" and spec.quant.kv_cache_calibration["num_samples"] == 2
    pool = plan_pool(spec, CacheConfig(), torch.device("cpu"))
    assert pool.bytes_per_token == plan["model"]["kv_bytes_per_token"] == 2 * 4 * 2 * 64 * 1
