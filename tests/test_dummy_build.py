"""--load-format dummy: an engine from a config.json alone, with random weights."""

from __future__ import annotations

import json

import pytest
import torch

from ingot.cli import main
from ingot.errors import RequestError
from ingot.runtime.engine import LLMEngine
from ingot.sampling_params import SamplingParams
from tests.tiny_models import BASE


def test_dummy_engine_runs_on_token_ids(tmp_path, capsys):
    config = {**BASE, "architectures": ["LlamaForCausalLM"], "torch_dtype": "bfloat16"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    engine_dir = tmp_path / "engine"
    assert main(["build", str(tmp_path / "config.json"), "-o", str(engine_dir), "--load-format", "dummy",
                 "--max-seq-len", "128", "--device", "cpu"]) == 0
    assert main(["inspect", str(engine_dir)]) == 0
    assert "LlamaForCausalLM: 2 layers" in capsys.readouterr().out
    engine = LLMEngine(engine_dir, device="cpu")
    assert engine.tokenizer is None and engine.spec.load_format == "dummy"
    request = engine.add_request([1, 2, 3], SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True))
    while engine.has_unfinished_requests():
        engine.step()
    assert len(request.output_token_ids) == 5 and request.finish_reason == "length"
    with pytest.raises(RequestError, match="has no tokenizer .* give the prompt as token ids"):
        engine.add_request("text", SamplingParams())
    from ingot.structured import StructuredOutput

    with pytest.raises(RequestError, match="has no tokenizer: structured output needs one"):
        engine.add_request([1, 2, 3], SamplingParams(structured=StructuredOutput.choice(["a", "b"])))


def test_dummy_needs_a_config_json(tmp_path, capsys):
    assert main(["build", str(tmp_path), "-o", str(tmp_path / "e"), "--load-format", "dummy"]) == 2
    assert "needs a config.json" in capsys.readouterr().err


def test_weights_generated_at_load_equal_the_written_ones(tmp_path, capsys):
    """--dummy-weights at_load writes no weight file; the loader generates (and FP8-quantizes) the
    same tensors a written dummy engine holds, from the seed engine.json records."""
    config = {**BASE, "architectures": ["LlamaForCausalLM"], "torch_dtype": "bfloat16"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    common = ["--load-format", "dummy", "--max-seq-len", "64", "--device", "cpu", "--quant", "fp8"]
    for name, extra in (("file", []), ("at_load", ["--dummy-weights", "at_load"])):
        assert main(["build", str(tmp_path / "config.json"), "-o", str(tmp_path / name), *common, *extra]) == 0
    assert not list((tmp_path / "at_load").glob("*.safetensors"))
    assert json.loads((tmp_path / "at_load" / "engine.json").read_text())["dummy_seed"] == 0
    written, generated = LLMEngine(tmp_path / "file", device="cpu"), LLMEngine(tmp_path / "at_load", device="cpu")
    want, got = written.model.state_dict(), generated.model.state_dict()
    assert set(want) == set(got) and any(t.dtype == torch.float8_e4m3fn for t in got.values())
    for name in want:
        assert torch.equal(want[name].float(), got[name].float()), name
    assert main(["build", str(tmp_path / "config.json"), "-o", str(tmp_path / "static"), *common,
                 "--fp8-scaling", "per_tensor", "--dummy-weights", "at_load"]) == 2
    assert "nothing calibrates" in capsys.readouterr().err
