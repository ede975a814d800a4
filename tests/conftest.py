"""Shared fixtures: a tiny random engine built once per session."""

from __future__ import annotations

import pytest

from tests.tiny_models import make_checkpoint


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """LLM(checkpoint) builds into INGOT_CACHE_DIR; never the user's home in tests."""
    monkeypatch.setenv("INGOT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "ingot-cache"))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """(directory, transformers model) of a 2-layer random Llama with a byte-level tokenizer."""
    directory = tmp_path_factory.mktemp("tiny-ckpt")
    model = make_checkpoint(directory, "LlamaForCausalLM", seed=11)
    return directory, model


@pytest.fixture(scope="session")
def tiny_engine(tiny_checkpoint, tmp_path_factory):
    """A CPU fp32 engine of tiny_checkpoint with a small envelope."""
    from ingot.builder.build import build_engine
    from ingot.config import BuildConfig

    directory = tmp_path_factory.mktemp("engines") / "tiny"
    build_engine(str(tiny_checkpoint[0]), directory,
                 BuildConfig(dtype="fp32", max_batch_size=8, max_input_len=64, max_seq_len=128,
                             max_num_tokens=64, tokens_per_block=8), device="cpu")
    return directory
