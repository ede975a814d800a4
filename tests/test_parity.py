"""ingot against transformers on the same random weights: logits and greedy generation."""

from __future__ import annotations

import pytest
import torch

from ingot.builder.build import build_engine
from ingot.config import BuildConfig
from ingot.runtime.engine import LLMEngine
from ingot.sampling_params import SamplingParams
from tests.tiny_models import make_checkpoint

VARIANTS = [
    ("LlamaForCausalLM", {}),  # GQA 6/2, untied
    ("LlamaForCausalLM", {"num_key_value_heads": 6, "tie_word_embeddings": True}),  # MHA, tied
    ("LlamaForCausalLM", {"num_key_value_heads": 1, "attention_bias": True, "mlp_bias": True,
                          "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                           "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
                          "rope_theta": 500000.0}),  # MQA, biases, llama3 rope
    ("MistralForCausalLM", {"sliding_window": 9, "hidden_size": 60, "num_attention_heads": 5,
                            "num_key_value_heads": 5, "vocab_size": 307}),  # small window is exercised
    ("Qwen2ForCausalLM", {"tie_word_embeddings": True}),  # qkv bias
    ("Qwen3ForCausalLM", {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2}),  # q/k norm
]
PROMPT_LENGTHS = [1, 5, 17, 33]


def _engine(tmp_path, arch, overrides, seed, **build):
    hf_model = make_checkpoint(tmp_path / "ckpt", arch, seed=seed, **overrides)
    build_engine(str(tmp_path / "ckpt"), tmp_path / "engine",
                 BuildConfig(dtype="fp32", max_seq_len=128, max_input_len=64, tokens_per_block=8, **build),
                 device="cpu")
    return hf_model, LLMEngine(tmp_path / "engine", device="cpu")


def _prompts(seed: int, vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in PROMPT_LENGTHS]


def _ingot_prefill_logits(engine: LLMEngine, prompts: list[list[int]]) -> list[torch.Tensor]:
    """Every position's logits for a batch of prompts, computed as one packed step."""
    requests = [engine.add_request(p, SamplingParams(max_tokens=1)) for p in prompts]
    batch = engine.scheduler.schedule()
    assert batch.requests == requests, "all prompts fit one step"
    inputs = engine.runner.prepare(batch)
    with torch.inference_mode():
        hidden = engine.model(inputs.input_ids, inputs.positions, engine.pool.layers, inputs.metadata)
        logits = engine.model.compute_logits(hidden)
    for request in requests:
        engine.abort_request(request.request_id)
    bounds = inputs.metadata.query_start_loc_cpu
    return [logits[bounds[i]:bounds[i + 1]] for i in range(len(prompts))]


def _hf_greedy(hf_model, prompt: list[int], num: int) -> list[int]:
    """Greedy decoding by full recomputation: no EOS handling or logits processors in the way."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(num):
            ids.append(int(hf_model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("arch,overrides", VARIANTS, ids=[f"{a}-{i}" for i, (a, _) in enumerate(VARIANTS)])
def test_logits_match_transformers(tmp_path, arch, overrides, seed):
    hf_model, engine = _engine(tmp_path, arch, overrides, seed)
    prompts = _prompts(seed, engine.spec.model.vocab_size)
    ours = _ingot_prefill_logits(engine, prompts)
    for prompt, logits in zip(prompts, ours):
        with torch.no_grad():
            expected = hf_model(torch.tensor([prompt])).logits[0].float()
        torch.testing.assert_close(logits, expected, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("arch,overrides", VARIANTS, ids=[f"{a}-{i}" for i, (a, _) in enumerate(VARIANTS)])
def test_greedy_generation_matches_transformers(tmp_path, arch, overrides):
    hf_model, engine = _engine(tmp_path, arch, overrides, seed=3)
    prompts = _prompts(3, engine.spec.model.vocab_size)
    params = SamplingParams(max_tokens=32, temperature=0.0, ignore_eos=True)
    requests = [engine.add_request(p, params) for p in prompts]
    while engine.has_unfinished_requests():
        engine.step()
    for prompt, request in zip(prompts, requests):
        with torch.no_grad():
            expected = _hf_greedy(hf_model, prompt, 32)
        assert request.output_token_ids == expected


def test_decode_crosses_blocks_in_a_small_pool(tmp_path):
    """Generation across many block boundaries, several sequences interleaved, matches transformers."""
    hf_model, engine = _engine(tmp_path, "LlamaForCausalLM", {}, seed=5, max_num_tokens=24)
    prompts = _prompts(5, engine.spec.model.vocab_size)
    params = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
    requests = [engine.add_request(p, params) for p in prompts]
    while engine.has_unfinished_requests():
        batch_tokens = engine.step()
        assert batch_tokens is not None
    for prompt, request in zip(prompts, requests):
        with torch.no_grad():
            expected = _hf_greedy(hf_model, prompt, 40)
        assert request.output_token_ids == expected
