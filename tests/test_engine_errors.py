"""Bad input gets a clear error naming the limit or cause, and leaves nothing half-built."""

from __future__ import annotations

import json
import shutil

import pytest

from ingot.builder.build import build_engine
from ingot.engine_format import ENGINE_JSON, FORMAT_VERSION
from ingot.cli import main
from ingot.config import BuildConfig
from ingot.errors import CheckpointError, ConfigError, EngineError, RequestError
from ingot.runtime.engine import LLMEngine
from ingot.sampling_params import SamplingParams


@pytest.fixture(scope="module")
def engine(tiny_engine):
    return LLMEngine(tiny_engine, device="cpu")


def test_prompt_longer_than_max_input_len(engine):
    with pytest.raises(RequestError, match=r"65 tokens, over the engine's max_input_len=64"):
        engine.add_request(list(range(65)), SamplingParams(max_tokens=1))


def test_max_tokens_past_max_seq_len(engine):
    with pytest.raises(RequestError, match=r"exceeds the engine's max_seq_len=128; lower max_tokens to at most 118"):
        engine.add_request(list(range(10)), SamplingParams(max_tokens=119))


def test_empty_prompt_and_out_of_vocab_tokens(engine):
    with pytest.raises(RequestError, match="prompt is empty"):
        engine.add_request([], SamplingParams())
    with pytest.raises(RequestError, match=r"outside the vocabulary \[0, 311\)"):
        engine.add_request([1, 400], SamplingParams())
    assert not engine.has_unfinished_requests()


def test_invalid_sampling_params_name_the_field():
    with pytest.raises(RequestError, match=r"SamplingParams.top_p=1.5 is invalid: must be in \(0, 1\]"):
        SamplingParams(top_p=1.5)
    with pytest.raises(RequestError, match="temperature"):
        SamplingParams(temperature=-1)


@pytest.mark.parametrize(("params", "message"), [
    (dict(repetition_penalty=1e-300), r"repetition_penalty=1e-300 is invalid: must be in \[0.01, 100.0\]"),
    (dict(repetition_penalty=1e-40), "repetition_penalty"),
    (dict(temperature=float("inf")), "temperature=inf is invalid: must be a finite number"),
    (dict(top_p=float("nan")), "top_p=nan is invalid: must be a finite number"),
    (dict(stop=["x" * 40_000] * 2), "must be strings of at most 65536 characters in all"),
    (dict(stop=["x" * 65_537]), r"stop=\['xxxx.*\.\.\. \(65541 characters\) is invalid"),
    (dict(stop_token_ids=[-1]), "at most 256 non-negative token ids"),
])
def test_values_that_would_break_the_sampler_or_stall_the_engine_are_refused(params, message):
    """A penalty that underflows float32 made logits infinite (NaN logprobs, garbage text); the stop
    strings' automaton is built on the engine's thread (issue 21)."""
    with pytest.raises(RequestError, match=message):
        SamplingParams(**params)


def test_stop_token_ids_outside_the_vocabulary(engine):
    with pytest.raises(RequestError, match=r"stop_token_ids \[311\] are outside the vocabulary \[0, 311\)"):
        engine.add_request([1, 2], SamplingParams(stop_token_ids=[5, 311]))
    assert not engine.has_unfinished_requests()


def _copy_engine(tiny_engine, tmp_path):
    copy = tmp_path / "engine"
    shutil.copytree(tiny_engine, copy)
    return copy


def _edit_engine_json(directory, **changes):
    data = json.loads((directory / ENGINE_JSON).read_text())
    data.update(changes)
    (directory / ENGINE_JSON).write_text(json.dumps(data))


def test_engine_from_another_device_is_refused(tiny_engine, tmp_path):
    engine_dir = _copy_engine(tiny_engine, tmp_path)
    _edit_engine_json(engine_dir, target={"kind": "cuda", "name": "NVIDIA H100 80GB HBM3", "capability": "9.0"})
    with pytest.raises(EngineError, match=r"built for cuda NVIDIA H100 80GB HBM3 \(compute capability 9.0\), "
                                          r"but this machine runs it on cpu"):
        LLMEngine(engine_dir, device="cpu")


def test_engine_of_another_format_version_is_refused(tiny_engine, tmp_path):
    engine_dir = _copy_engine(tiny_engine, tmp_path)
    _edit_engine_json(engine_dir, format_version=FORMAT_VERSION + 1)
    with pytest.raises(EngineError, match=f"format version {FORMAT_VERSION + 1}, this ingot reads version"):
        LLMEngine(engine_dir, device="cpu")


def test_directory_without_engine_json_is_not_an_engine(tiny_engine, tmp_path):
    engine_dir = _copy_engine(tiny_engine, tmp_path)
    (engine_dir / ENGINE_JSON).unlink()
    with pytest.raises(EngineError, match="is not an engine: it has no engine.json"):
        LLMEngine(engine_dir, device="cpu")


def test_unsupported_architecture_names_it_and_the_supported(tiny_checkpoint, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint[0], ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"'GPT2LMHeadModel' is not supported; supported architectures: "
                                              r"LlamaForCausalLM, MistralForCausalLM"):
        build_engine(str(ckpt), tmp_path / "out", device="cpu")
    assert not (tmp_path / "out").exists()


def test_failed_build_leaves_no_engine(tiny_checkpoint, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint[0], ckpt)
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated
    with pytest.raises(CheckpointError):
        build_engine(str(ckpt), tmp_path / "out", device="cpu")
    assert list(tmp_path.iterdir()) == [ckpt], "no engine and no staging directory left behind"


def test_build_envelope_checked_against_the_model(tiny_checkpoint, tmp_path):
    with pytest.raises(ConfigError, match=r"max_seq_len=1024 exceeds the model's max_position_embeddings=512"):
        build_engine(str(tiny_checkpoint[0]), tmp_path / "out", BuildConfig(max_seq_len=1024, max_input_len=256), device="cpu")
    with pytest.raises(ConfigError, match=r"max_input_len=300 must be <= max_seq_len=200"):
        BuildConfig(max_input_len=300, max_seq_len=200)


def test_build_refuses_to_clobber_a_non_engine_directory(tiny_checkpoint, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(EngineError, match="exists and is not an engine"):
        build_engine(str(tiny_checkpoint[0]), tmp_path / "out", device="cpu")
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_cli_reports_errors_cleanly(tmp_path, capsys):
    assert main(["build", str(tmp_path / "missing"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ingot build: error:") and "missing" in err
    assert main(["inspect", str(tmp_path)]) == 2
    assert "is not an engine" in capsys.readouterr().err


def test_engine_of_format_version_1_is_refused_with_a_rebuild_hint(tiny_engine, tmp_path):
    engine_dir = _copy_engine(tiny_engine, tmp_path)
    data = json.loads((engine_dir / ENGINE_JSON).read_text())
    for key in ("quantization", "weights"):  # a version-1 engine.json had neither
        data.pop(key)
    data.update(format_version=1, parallel={"tp": 1, "pp": 1})
    (engine_dir / ENGINE_JSON).write_text(json.dumps(data))
    with pytest.raises(EngineError, match=r"format version 1, this ingot reads version 2; rebuild it"):
        LLMEngine(engine_dir, device="cpu")


@pytest.mark.parametrize("tamper, message", [
    (lambda t: t.half(), r"'norm.weight' is stored as float16 \(72,\), but engine.json describes a model whose "
                         r"parameter is float32 \(72,\)"),
    (lambda t: t[:-1], r"'norm.weight' is stored as float32 \(71,\), .* parameter is float32 \(72,\)"),
])
def test_stored_weight_of_another_dtype_or_shape_is_refused_not_cast(tiny_engine, tmp_path, monkeypatch, tamper,
                                                                     message):
    from safetensors.torch import load_file, save_file

    engine_dir = _copy_engine(tiny_engine, tmp_path)
    weights = load_file(engine_dir / "rank0.safetensors")
    weights["norm.weight"] = tamper(weights["norm.weight"]).contiguous()
    save_file(weights, engine_dir / "rank0.safetensors")
    with pytest.raises(EngineError, match="do not match the SHA-256|bytes, but engine.json recorded"):
        LLMEngine(engine_dir, device="cpu")
    monkeypatch.setenv("INGOT_SKIP_VERIFY", "1")  # past the checksum, the loader's own checks still hold
    with pytest.raises(EngineError, match=message):
        LLMEngine(engine_dir, device="cpu")


def test_a_flipped_bit_in_the_weights_is_caught_at_load(tiny_engine, tmp_path, monkeypatch):
    """Checksums per chunk of each rank file (issue 21: damaged weights loaded silently)."""
    import ingot.integrity

    engine_dir = _copy_engine(tiny_engine, tmp_path)
    path = engine_dir / "rank0.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(EngineError, match=r"rank0.safetensors: bytes 0-\d+ do not match the SHA-256 recorded in "
                                          r"engine.json .* INGOT_SKIP_VERIFY=1 \(--skip-verify\)"):
        LLMEngine(engine_dir, device="cpu")
    monkeypatch.setenv("INGOT_SKIP_VERIFY", "1")
    LLMEngine(engine_dir, device="cpu")  # trusted as it is
    monkeypatch.delenv("INGOT_SKIP_VERIFY")
    path.write_bytes(bytes(data[:-10]))
    with pytest.raises(EngineError, match="truncated or replaced"):
        LLMEngine(engine_dir, device="cpu")
    # chunks of a large file are hashed separately: the damaged one is named
    monkeypatch.setattr(ingot.integrity, "CHUNK_BYTES", 4096)
    recorded = ingot.integrity.file_checksum(path)
    assert len(recorded["sha256"]) == -(-recorded["bytes"] // 4096)
    data = bytearray(path.read_bytes())
    data[5000] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(EngineError, match="bytes 4096-8191 do not match"):
        ingot.integrity.verify_file(path, recorded, engine_dir)


def test_missing_rank_file_is_an_incomplete_engine(tiny_engine, tmp_path):
    engine_dir = _copy_engine(tiny_engine, tmp_path)
    (engine_dir / "rank0.safetensors").unlink()
    with pytest.raises(EngineError, match="rank0.safetensors is missing; the engine is incomplete"):
        LLMEngine(engine_dir, device="cpu")


def test_the_runtime_imports_no_build_code():
    """Serving an engine needs neither the checkpoint readers (GGUF) nor the GEMM tuner."""
    import subprocess
    import sys

    code = ("import sys, ingot.runtime.engine, ingot.runtime.engine_loop, ingot.async_llm, ingot.llm, ingot.serve.app\n"
            "build = ('ingot.builder', 'ingot.tactics.gemm_tuning', 'ingot.tactics.tune', 'ingot.tactics.timing', 'gguf')\n"
            "print(sorted(m for m in sys.modules if m.startswith(build)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_cli_skip_verify_loads_a_modified_engine(tiny_engine, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("INGOT_SKIP_VERIFY", raising=False)  # restored (unset) after the test
    engine_dir = _copy_engine(tiny_engine, tmp_path)
    path = engine_dir / "rank0.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # the low bit of a weight: the model still runs
    path.write_bytes(bytes(data))
    assert main(["run", str(engine_dir), "hi", "--max-tokens", "2", "--device", "cpu"]) != 0
    assert "do not match the SHA-256" in capsys.readouterr().err
    assert main(["run", str(engine_dir), "hi", "--max-tokens", "2", "--device", "cpu", "--skip-verify"]) == 0


def _set_in_engine_json(section: str | None, key: str, value):
    def mutate(directory):
        data = json.loads((directory / ENGINE_JSON).read_text())
        (data[section] if section else data)[key] = value
        (directory / ENGINE_JSON).write_text(json.dumps(data))
    return mutate


@pytest.mark.parametrize(("mutate", "error", "message"), [
    (_set_in_engine_json(None, "dtype", "float7"), EngineError, r"engine.json is corrupt \(dtype 'float7' is none of"),
    (lambda d: (d / ENGINE_JSON).write_bytes(b"\xff\xfe{"), EngineError, r"engine.json is corrupt \('utf-8' codec"),
    (lambda d: (d / ENGINE_JSON).write_text('{"format_version": 2}'), EngineError,
     r"engine.json is corrupt \(KeyError: "),
    (_set_in_engine_json("model", "vocab_size", 999), EngineError, r"'embed_tokens.weight' is stored as float32 \(311"),
    (lambda d: (d / "tokenizer.json").write_text("garbage"), CheckpointError,
     r"tokenizer.json cannot be read as a tokenizer .*; copy it again from the model's checkpoint, or rebuild"),
    (lambda d: (d / "tokenizer_config.json").write_text("{{{"), CheckpointError, r"tokenizer_config.json is not valid JSON"),
    (lambda d: (d / "generation_config.json").write_text("[1]"), CheckpointError,
     r"generation_config.json holds a JSON list, not an object"),
    (lambda d: (d / "chat_template.jinja").write_bytes(b"\xff\xfe"), CheckpointError,
     r"chat_template.jinja is not UTF-8 text .*; copy it again"),
], ids=["dtype", "non-utf8", "missing-section", "vocab", "tokenizer", "tokenizer-config", "generation-config",
        "chat-template-jinja"])
def test_malformed_engine_files_are_one_line_errors(tiny_engine, tmp_path, mutate, error, message):
    """Issue 21: each of these ended in a traceback."""
    engine_dir = _copy_engine(tiny_engine, tmp_path)
    mutate(engine_dir)
    with pytest.raises(error, match=message):
        LLMEngine(engine_dir, device="cpu")


@pytest.mark.parametrize(("template", "message"), [
    ("{% for m in messages %}{{ m.content }}{{ 1 / 0 }}{% endfor %}",
     r"tokenizer_config.json failed on these messages \(ZeroDivisionError"),
    ("{% for m in messages %}", r"tokenizer_config.json does not compile \(TemplateSyntaxError"),
    ({"default": 5}, r"tokenizer_config.json is a JSON int, not a string of Jinja"),
], ids=["raises", "syntax", "not-a-string"])
def test_a_chat_template_that_fails_is_a_request_error(tiny_engine, tmp_path, template, message):
    """Each kind of template failure is the chat request's error (the server's 400), naming the file."""
    from ingot.tokenizer import Tokenizer

    engine_dir = _copy_engine(tiny_engine, tmp_path)
    config = json.loads((engine_dir / "tokenizer_config.json").read_text())
    config["chat_template"] = template
    (engine_dir / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = Tokenizer.from_dir(engine_dir)
    with pytest.raises(RequestError, match=r"the chat template of .*" + message):
        tokenizer.encode_chat([{"role": "user", "content": "hi"}])
