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


@pytest.fixture(scope="session")
def smollm2_engine(tmp_path_factory):
    """The embedded SmolLM2-135M-Instruct, built once per session (fp32, CPU): every test of the real
    model shares it."""
    from ingot.builder.build import build_engine
    from ingot.config import BuildConfig

    directory = tmp_path_factory.mktemp("engines") / "smollm2"
    build_engine("smollm2", directory, BuildConfig(max_seq_len=1024, max_input_len=1024, max_batch_size=16),
                 device="cpu")
    return directory


@pytest.fixture(scope="session")
def smollm2_transformers():
    """(model, tokenizer) of the same GGUF, dequantized by transformers' own reader, fp32."""
    import torch
    import transformers

    from ingot.builder.presets import resolve_preset

    gguf = resolve_preset("smollm2")
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                              dtype=torch.float32).eval()
    return model, tokenizer
