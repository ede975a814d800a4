"""`ingot build CONFIG --load-format dummy --tokenizer DIR_OR_FILE`: random weights, a real tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ingot import LLM, SamplingParams
from ingot.cli import main
from tests.tiny_models import BASE

CORPUS = ["the quick brown fox jumps over the lazy dog", "engines built ahead of time serve text quickly",
          "a tokenizer turns text into ids and back again"]
PROMPT = "the lazy engine serves brown text"
CHATML = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


def _bpe(vocab_size: int = 300) -> Tokenizer:
    """A byte-level BPE trained here: every text round-trips, and its ids are its own (not the weights')."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS * 20, trainer)
    return tokenizer


def _config(directory: Path, **overrides) -> Path:
    config = {**BASE, "architectures": ["LlamaForCausalLM"], "bos_token_id": 0, "eos_token_id": 1, **overrides}
    (directory / "config.json").write_text(json.dumps(config))
    return directory / "config.json"


def _build(config: Path, engine: Path, *extra: str) -> int:
    return main(["build", str(config), "-o", str(engine), "--load-format", "dummy", "--max-seq-len", "128",
                 "--device", "cpu", *extra])


def _tokenizer_folder(directory: Path) -> Path:
    folder = directory / "tok"
    folder.mkdir()
    _bpe().save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>",
                                                              "chat_template": CHATML}))
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": 1}))
    return folder


@pytest.mark.parametrize("form", ["folder", "file"])
def test_dummy_engine_reads_and_writes_text_through_the_given_tokenizer(tmp_path, capsys, form):
    source = _tokenizer_folder(tmp_path)
    if form == "file":  # a lone tokenizer.json under any name
        source = tmp_path / "llama-like.json"
        source.write_bytes((tmp_path / "tok" / "tokenizer.json").read_bytes())
    engine = tmp_path / "engine"
    assert _build(_config(tmp_path), engine, "--tokenizer", str(source)) == 0
    copied = {p.name for p in engine.iterdir() if "token" in p.name or "generation" in p.name}
    assert copied == ({"tokenizer.json", "tokenizer_config.json", "generation_config.json"} if form == "folder"
                      else {"tokenizer.json", "tokenizer_config.json"})
    assert json.loads((engine / "engine.json").read_text())["tokenizer_source"] == str(source.resolve())
    capsys.readouterr()
    assert main(["inspect", str(engine)]) == 0
    assert f"tokenizer from {source.resolve()} (--tokenizer)" in capsys.readouterr().out

    llm = LLM(engine, device="cpu")
    out = llm.generate(PROMPT, SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True))[0]
    assert out.prompt_token_ids == _bpe().encode(PROMPT).ids  # the given tokenizer's ids, nothing added
    assert llm.tokenizer.decode(out.prompt_token_ids) == PROMPT
    assert len(out.token_ids) == 6 and out.text == llm.tokenizer.decode(out.token_ids)
    if form == "folder":  # the companions came along: the chat template and the special tokens
        assert llm.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=False) \
            == "<|im_start|>user\nhi<|im_end|>\n"
        assert llm.tokenizer.eos_token_ids == (1,)


def test_a_tokenizer_larger_than_the_embedding_is_refused(tmp_path, capsys):
    tokenizer = _bpe()
    trained = tokenizer.get_vocab_size()
    tokenizer.add_special_tokens(["<|im_start|>"])  # an added token counts: its id is past the trained ones
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    engine = tmp_path / "engine"
    assert _build(_config(tmp_path, vocab_size=trained), engine, "--tokenizer", str(tmp_path / "tokenizer.json")) == 2
    err = capsys.readouterr().err
    assert f"its vocabulary has {trained + 1} tokens (added tokens included), more than the config's vocab_size " \
           f"{trained}" in err
    assert len(err.strip().splitlines()) == 1 and not engine.exists()


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist; pass a tokenizer.json file, or a folder holding one"),
    ("empty folder", "the folder holds no tokenizer.json"),
    ("not a tokenizer", "not a valid tokenizer.json"),
])
def test_bad_tokenizer_paths_are_one_line_errors(tmp_path, capsys, case, message):
    path = {"missing": tmp_path / "nowhere", "empty folder": tmp_path / "empty",
            "not a tokenizer": tmp_path / "tokenizer.json"}[case]
    if case == "empty folder":
        path.mkdir()
    if case == "not a tokenizer":
        path.write_text('{"model": "no"}')
    assert _build(_config(tmp_path), tmp_path / "engine", "--tokenizer", str(path)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ingot build: error: --tokenizer {path}") and message in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "engine").exists()


def test_a_checkpoint_keeps_its_own_tokenizer(tmp_path, capsys):
    _bpe().save(str(tmp_path / "tokenizer.json"))
    assert main(["build", str(tmp_path), "-o", str(tmp_path / "engine"), "--tokenizer",
                 str(tmp_path / "tokenizer.json")]) == 2
    assert "--tokenizer is for --load-format dummy builds" in capsys.readouterr().err


def test_without_a_tokenizer_text_commands_name_the_flag(tmp_path, capsys):
    engine = tmp_path / "engine"
    assert _build(_config(tmp_path), engine) == 0
    (tmp_path / "text.txt").write_text(" ".join(CORPUS))
    capsys.readouterr()
    assert main(["eval", "perplexity", str(engine), "--text", str(tmp_path / "text.txt"), "--device", "cpu",
                 "--output", str(tmp_path / "ppl.json")]) == 2
    assert "has no tokenizer" in (err := capsys.readouterr().err) and "rebuild it with --tokenizer" in err
    assert main(["inspect", str(engine)]) == 0
    assert "no tokenizer (token ids only; --tokenizer at build gives one)" in capsys.readouterr().out
