"""INT4 engines end to end on a tiny model: built with each method (AWQ and GPTQ calibrated on a
text), recorded in engine.json, loaded strictly, generating; split over two tensor-parallel ranks
they give the tokens of one."""

from __future__ import annotations

import json

import pytest

from ingot.builder.build import build_engine
from ingot.config import BuildConfig, ParallelConfig, QuantConfig
from ingot.engine_format import ENGINE_JSON
from ingot.errors import ConfigError
from ingot.llm import LLM
from ingot.sampling_params import SamplingParams
from tests.helpers_data import hamlet_path
from tests.tiny_models import make_checkpoint

BUILD = BuildConfig(dtype="fp32", max_batch_size=8, max_input_len=64, max_seq_len=128, max_num_tokens=64,
                    tokens_per_block=8)
PROMPTS = ["To be, or not to be", "Something is rotten", "x"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("int4-ckpt")
    make_checkpoint(directory, "LlamaForCausalLM", seed=21, hidden_size=64, num_attention_heads=8,
                    num_key_value_heads=2, intermediate_size=128, num_hidden_layers=2)
    return directory


@pytest.fixture(scope="module")
def calib_text(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "calib.md"
    path.write_text(hamlet_path().read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    return path


def _build(checkpoint, directory, method, calib_text=None, tp=1, **params):
    if method in ("int4_awq", "int4_gptq"):
        params = {"calib_data": str(calib_text), "calib_size": 4, "calib_seq_len": 64, **params}
    build_engine(str(checkpoint), directory, BUILD, device="cpu", parallel=ParallelConfig(tp=tp),
                 quant=QuantConfig(method, {"group_size": 32, **params}))
    return directory


def _greedy(engine_dir) -> list[list[int]]:
    llm = LLM(engine_dir, device="cpu")
    try:
        return [out.token_ids for out in llm.generate(PROMPTS, SamplingParams(max_tokens=8, temperature=0.0,
                                                                              ignore_eos=True))]
    finally:
        llm.engine.shutdown()


@pytest.mark.parametrize("method,params", [("int4_rtn", {}), ("int4_awq", {}), ("int4_gptq", {}),
                                           ("int4_gptq", {"act_order": True})])
def test_each_method_builds_records_and_generates(checkpoint, calib_text, tmp_path, method, params):
    engine_dir = _build(checkpoint, tmp_path / "e", method, calib_text, **params)
    spec = json.loads((engine_dir / ENGINE_JSON).read_text())
    assert spec["quantization"]["method"] == method and spec["quantization"]["params"]["group_size"] == 32
    if method != "int4_rtn":
        calibration = spec["quantization"]["params"]["calibration"]
        assert calibration["num_samples"] == 4 and calibration["seq_len"] == 64
        assert calibration["source"].startswith("calib.md (sha256 ")
    outputs = _greedy(engine_dir)
    assert all(len(tokens) == 8 for tokens in outputs)


def test_tensor_parallel_int4_gives_the_tokens_of_one_rank(checkpoint, tmp_path):
    one = _greedy(_build(checkpoint, tmp_path / "tp1", "int4_rtn"))
    two = _greedy(_build(checkpoint, tmp_path / "tp2", "int4_rtn", tp=2))
    assert one == two


@pytest.mark.parametrize("params,message", [
    ({"group_size": 48}, r"--group-size 48 is not supported; use one of 32, 64, 128"),
    ({"group_size": 128}, r"--tp 2 gives each rank 32 of o_proj's 64 inputs, not a multiple of --group-size 128"),
])
def test_layouts_int4_cannot_take_are_refused(checkpoint, tmp_path, params, message):
    with pytest.raises(ConfigError, match=message):
        build_engine(str(checkpoint), tmp_path / "e", BUILD, device="cpu", parallel=ParallelConfig(tp=2),
                     quant=QuantConfig("int4_rtn", params))


def test_calibrating_methods_need_a_text(checkpoint, tmp_path):
    with pytest.raises(ConfigError, match=r"--quant int4_awq calibrates on a text: pass --calib-data FILE"):
        build_engine(str(checkpoint), tmp_path / "e", BUILD, device="cpu", quant=QuantConfig("int4_awq"))
    assert not (tmp_path / "e").exists()
