"""`ingot eval perplexity`: the windows, the figure against transformers on the real SmolLM2 over
Hamlet, and the bad inputs."""

from __future__ import annotations

import json

import pytest

from ingot.cli import main
from ingot.errors import ConfigError
from ingot.eval.perplexity import windows
from tests.helpers_data import hamlet_path


@pytest.mark.parametrize("num_tokens,window,stride", [(10, 10, 10), (100, 32, 16), (101, 32, 7), (57, 57, 1),
                                                      (1000, 512, 512), (33, 32, 32)])
def test_every_token_but_the_first_is_scored_once_with_its_window_as_context(num_tokens, window, stride):
    spans = windows(num_tokens, window, stride)
    scored = [i for w in spans for i in range(w.first_scored, w.end)]
    # disjoint windows (stride = window) leave the first token of each window without context
    unscored = {0} | ({w.begin for w in spans} if stride == window else set())
    assert scored == [i for i in range(num_tokens) if i not in unscored], "each token once, in order"
    assert all(w.end - w.begin <= window and w.begin <= w.first_scored - 1 for w in spans)
    assert spans[-1].end == num_tokens and all(b.begin - a.begin == stride for a, b in zip(spans, spans[1:]))


def test_smollm2_perplexity_equals_transformers_over_hamlet(smollm2_engine, smollm2_transformers, tmp_path, capsys):
    """fp32, the same tokens and windows: within 0.1% (observed: ~1e-7)."""
    from ingot.eval.reference import transformers_perplexity
    from ingot.tokenizer import Tokenizer

    text = tmp_path / "hamlet-part.md"
    text.write_text(hamlet_path().read_text(encoding="utf-8")[20_000:32_000], encoding="utf-8")
    out = tmp_path / "ppl.json"
    assert main(["eval", "perplexity", str(smollm2_engine), "--text", str(text), "--window", "512", "--stride", "256",
                 "--output", str(out)]) == 0
    ours = json.loads(out.read_text())["ingot"]
    assert f"perplexity {ours['perplexity']:.4f}" in capsys.readouterr().out
    ids = Tokenizer.from_dir(smollm2_engine).encode(text.read_text(encoding="utf-8"))
    theirs = transformers_perplexity(smollm2_transformers[0], ids, 512, 256)
    assert ours["num_scored"] == theirs.num_scored == len(ids) - 1 and ours["num_windows"] == theirs.num_windows
    assert abs(ours["perplexity"] / theirs.perplexity - 1) < 1e-3
    assert 5 < ours["perplexity"] < 100, "an instruct model of 135M reads Shakespeare's verse with difficulty, not noise"


@pytest.mark.parametrize("content,extra,message", [
    ("", [], "is empty: give a text to score"),
    ("short text", ["--window", "64"], r"the text has \d+ tokens, fewer than one window of 64; pass --window \d+"),
    ("x " * 200, ["--window", "65"], r"--window 65 exceeds the engine's max_input_len=64 \(max_seq_len=128\); "
                                     r"pass --window 64 or less"),
    ("x " * 200, ["--window", "32", "--stride", "40"], r"--stride 40 must be in \[1, --window 32\]"),
])
def test_bad_input_is_a_clear_error(tiny_engine, tmp_path, capsys, content, extra, message):
    import re

    text = tmp_path / "text.txt"
    text.write_text(content)
    assert main(["eval", "perplexity", str(tiny_engine), "--text", str(text), *extra,
                 "--output", str(tmp_path / "out.json")]) == 2
    assert re.search(message, capsys.readouterr().err), message
    assert not (tmp_path / "out.json").exists()


def test_windows_refuse_a_text_of_one_token():
    with pytest.raises(ConfigError, match="perplexity needs at least 2"):
        windows(1, 1, 1)


def test_qwen_coder_perplexity_equals_transformers(tmp_path):
    """The second real checkpoint (Qwen2.5-Coder-0.5B-Instruct, from six package slices): the same
    agreement on a short passage (fp32)."""
    from ingot.builder.build import build_engine
    from ingot.builder.presets import PRESETS
    from ingot.config import BuildConfig
    from ingot.errors import CheckpointError
    from ingot.eval.perplexity import engine_perplexity
    from ingot.eval.reference import load_transformers_model, transformers_perplexity
    from ingot.llm import LLM

    try:
        build_engine("qwen2.5-coder-0.5b", tmp_path / "qwen", BuildConfig(max_seq_len=256, max_input_len=256),
                     device="cpu")
    except CheckpointError:
        pytest.skip(f"Qwen2.5-Coder-0.5B is not installed: {PRESETS['qwen2.5-coder-0.5b'].install_command}")
    llm = LLM(tmp_path / "qwen", device="cpu")
    ids = llm.tokenizer.encode(hamlet_path().read_text(encoding="utf-8")[40_000:43_000])
    ours = engine_perplexity(llm, ids, 256, 128)
    theirs = transformers_perplexity(load_transformers_model("qwen2.5-coder-0.5b", "fp32"), ids, 256, 128)
    assert abs(ours.perplexity / theirs.perplexity - 1) < 1e-3 and ours.num_scored == len(ids) - 1
