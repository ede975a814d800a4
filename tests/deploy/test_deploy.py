"""NIM-style deployment on CPU: profiles for this machine, and the build-once cache keyed by
(checkpoint fingerprint, device, profile, ingot version). In-process, on the tiny checkpoint."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

import ingot
from ingot.cli import main
from ingot.deploy import Machine, candidate_profiles, choose_profile, deployed_engine
from ingot.deploy.profiles import model_shape, parse_flags
from ingot.engine_format import ENGINE_JSON
from ingot.errors import ConfigError

CPU = Machine("cpu", "x86_64", 1, "", 16 * 10**9, "cpu")


@pytest.fixture
def checkpoint(tiny_checkpoint, tmp_path):
    """A private copy of the tiny checkpoint, free to edit."""
    return shutil.copytree(tiny_checkpoint[0], tmp_path / "tiny")


def test_cpu_profiles_are_fp32_clipped_to_the_context_default_first(tiny_checkpoint):
    profiles = candidate_profiles(model_shape(str(tiny_checkpoint[0])), CPU)
    # The tiny model's context is 512: every envelope is shrunk into it, duplicates dropped.
    assert [p.name for p in profiles] == ["fp32-tp1pp1-b8-i256-s512", "fp32-tp1pp1-b4-i342-s512",
                                          "fp32-tp1pp1-b16-i256-s512"]
    assert all(p.fits and p.tok_s is None for p in profiles)
    assert parse_flags(profiles[0].flags).max_seq_len == 512
    assert choose_profile(profiles) == (profiles[0], "the default envelope, and it fits")
    small = Machine("cpu", "x86_64", 1, "", 1000, "cpu")  # 1 kB of RAM: nothing fits
    with pytest.raises(ConfigError, match="no build profile fits"):
        choose_profile(candidate_profiles(model_shape(str(tiny_checkpoint[0])), small))


def test_unknown_profile_name_lists_the_choices(tiny_checkpoint):
    profiles = candidate_profiles(model_shape(str(tiny_checkpoint[0])), CPU)
    assert choose_profile(profiles, profiles[1].name)[0] is profiles[1]
    with pytest.raises(ConfigError, match="'nope' is not a profile.*fp32-tp1pp1-b8-i256-s512, fp32-tp1pp1-b4"):
        choose_profile(profiles, "nope")


def test_ingot_profiles_prints_candidates_and_the_choice(tiny_checkpoint, capsys):
    assert main(["profiles", str(tiny_checkpoint[0]), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "machine: cpu" in out and "LlamaForCausalLM" in out
    assert "* fp32-tp1pp1-b8-i256-s512" in out and "  fp32-tp1pp1-b4-i342-s512" in out
    assert "chosen: fp32-tp1pp1-b8-i256-s512: the default envelope, and it fits" in out
    assert "builds: ingot build MODEL -o DIR --dtype fp32 --max-batch-size 8" in out
    assert main(["profiles", str(tiny_checkpoint[0]), "--device", "cpu", "--profile", "fp32-tp1pp1-b4-i342-s512"]) == 0
    assert "* fp32-tp1pp1-b4-i342-s512" in capsys.readouterr().out


def test_serve_with_an_unknown_profile_fails_before_building(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("INGOT_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["serve", str(tiny_checkpoint[0]), "--device", "cpu", "--profile", "nope"]) == 2
    assert "--profile 'nope' is not a profile for this machine; choose one of fp32-" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()


def test_cache_builds_once_and_anew_when_checkpoint_or_version_changes(checkpoint, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("INGOT_CACHE_DIR", str(tmp_path / "cache"))
    caplog.set_level(logging.INFO, logger="ingot")
    profile = candidate_profiles(model_shape(str(checkpoint)), CPU)[1]  # the smallest envelope: a fast build

    def start() -> tuple[object, str]:
        caplog.clear()
        engine = deployed_engine(str(checkpoint), CPU, profile)
        return engine, caplog.text

    first, log = start()
    assert "building" in log and "writing fp32 weights" in log and (first / ENGINE_JSON).is_file()
    built_at = (first / ENGINE_JSON).stat().st_mtime_ns
    key = json.loads(first.with_name(first.name + ".key.json").read_text())
    assert key["profile"] == profile.name and key["ingot"] == ingot.__version__ and key["device"] == "cpu x86_64"

    again, log = start()
    assert again == first and "reusing cached engine" in log and "building" not in log
    assert (first / ENGINE_JSON).stat().st_mtime_ns == built_at  # not rebuilt

    monkeypatch.setattr(ingot, "__version__", "99.0.0")
    upgraded, log = start()
    assert upgraded != first and "building" in log
    monkeypatch.undo()
    monkeypatch.setenv("INGOT_CACHE_DIR", str(tmp_path / "cache"))
    assert start()[0] == first  # back on the first version: its engine is still there

    weights = next(checkpoint.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit of the last weight
    weights.write_bytes(bytes(data))
    edited, log = start()
    assert edited not in (first, upgraded) and "building" in log

    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 2e-5}))
    reconfigured, log = start()
    assert reconfigured not in (first, upgraded, edited) and "building" in log
    assert not list((tmp_path / "cache" / "deploy").glob(".*building*"))  # no half-built entries left


def test_gpu_profiles_follow_the_planner_on_the_gpus_present():
    """No GPU needed: a GPU machine is a name and a count, and the planner is plain Python."""
    from ingot.plan.presets import PRESETS

    h200 = Machine("cuda", "NVIDIA H200", 4, "9.0", 150_000_000_000, "cuda")
    profiles = candidate_profiles(PRESETS["llama-3.1-70b"], h200)
    default = profiles[0]
    # 140 GB of bf16 weights: the fewest H200s that hold them plus KV for 64 x 2,560 tokens are two.
    assert default.name == "bf16-tp2pp1-b64-i2048-s2560" and default.fits
    assert parse_flags(default.flags).tp == 2 and default.tok_s > 0 and default.memory_gb > 70
    assert choose_profile(profiles) == (default, "the default envelope, and it fits")
    one = Machine("cuda", "NVIDIA H200", 1, "9.0", 150_000_000_000, "cuda")
    alone = candidate_profiles(PRESETS["llama-3.1-70b"], one)
    assert not any(p.fits for p in alone)  # the weights alone overflow one H200
    with pytest.raises(ConfigError, match="no build profile fits this machine"):
        choose_profile(alone)
    a100 = Machine("cuda", "NVIDIA A100-SXM4-80GB", 1, "8.0", 85_000_000_000, "cuda")
    assert candidate_profiles(PRESETS["llama-3.1-8b"], a100)[0].name == "bf16-tp1pp1-b64-i2048-s2560"


def test_two_starts_at_once_build_once(checkpoint, tmp_path, monkeypatch, caplog):
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setenv("INGOT_CACHE_DIR", str(tmp_path / "cache"))
    caplog.set_level(logging.INFO, logger="ingot")
    profile = candidate_profiles(model_shape(str(checkpoint)), CPU)[1]
    with ThreadPoolExecutor(2) as pool:
        engines = list(pool.map(lambda _: deployed_engine(str(checkpoint), CPU, profile), range(2)))
    assert engines[0] == engines[1] and (engines[0] / ENGINE_JSON).is_file()
    assert caplog.text.count("later starts reuse it") == 1  # one build
    assert "another start is building" in caplog.text and caplog.text.count("reusing cached engine") == 1


def test_serve_names_a_checkpoint_engine_after_the_checkpoint(checkpoint, tmp_path, monkeypatch):
    from ingot.commands.serve import _engine_dir

    monkeypatch.setenv("INGOT_CACHE_DIR", str(tmp_path / "cache"))
    engine, name = _engine_dir(str(checkpoint), "cpu", "fp32-tp1pp1-b4-i342-s512")
    assert name == "tiny" and engine.parent == tmp_path / "cache" / "deploy"
    assert _engine_dir(str(engine), "cpu", None) == (engine, None)  # an engine: serve names it by its folder
    with pytest.raises(ConfigError, match="--profile is for a checkpoint or preset"):
        _engine_dir(str(engine), "cpu", "fp32-tp1pp1-b4-i342-s512")
