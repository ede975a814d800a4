"""Prompt log-probabilities against transformers' log-softmax on the same weights, for every
architecture, inside in-flight batching, with chunked prefill and with a cached prefix."""

from __future__ import annotations

import pytest
import torch

from ingot.builder.build import build_engine
from ingot.config import BuildConfig, CacheConfig, SchedulerConfig
from ingot.engine_format import read_spec
from ingot.runtime.engine import LLMEngine
from ingot.sampling_params import SamplingParams
from tests.test_parity import VARIANTS
from tests.tiny_models import make_checkpoint

PROMPT_LENGTHS = [1, 2, 9, 30, 47]
TOP_K = 3


@pytest.fixture(scope="module", params=VARIANTS, ids=[f"{a}-{i}" for i, (a, _) in enumerate(VARIANTS)])
def model_pair(request, tmp_path_factory):
    arch, overrides = request.param
    directory = tmp_path_factory.mktemp("ckpt")
    hf_model = make_checkpoint(directory / "ckpt", arch, seed=4, **overrides)
    build_engine(str(directory / "ckpt"), directory / "engine",
                 BuildConfig(dtype="fp32", max_seq_len=128, max_input_len=64, tokens_per_block=8), device="cpu")
    return hf_model, directory / "engine"


def _engine(engine_dir, max_num_tokens=64):
    build = read_spec(engine_dir).build
    return LLMEngine(engine_dir, CacheConfig(), device="cpu",
                     scheduler_config=SchedulerConfig.for_engine(build, max_num_tokens=max_num_tokens))


def _prompts(vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(7)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in PROMPT_LENGTHS]


def _run(engine, prompts, params):
    requests = [engine.add_request(p, params) for p in prompts]
    while engine.has_unfinished_requests():
        engine.step()
    return requests


def _check_against_transformers(hf_model, prompt, scores):
    assert len(scores) == len(prompt) and scores[0] is None
    with torch.no_grad():
        expected = torch.log_softmax(hf_model(torch.tensor([prompt])).logits[0].double(), dim=-1)
    for i in range(1, len(prompt)):
        entry = scores[i]
        assert next(iter(entry)) == prompt[i], "the actual token comes first"
        assert abs(entry[prompt[i]] - expected[i - 1, prompt[i]].item()) < 1e-4
        top_values, top_ids = expected[i - 1].topk(TOP_K)
        for token, value in zip(top_ids.tolist(), top_values.tolist()):
            assert abs(entry[token] - value) < 1e-4
        assert len(entry) in (TOP_K, TOP_K + 1)


@pytest.mark.parametrize("max_num_tokens", [64, 7], ids=["whole", "chunked-7"])
def test_prompt_logprobs_equal_transformers_log_softmax(model_pair, max_num_tokens):
    hf_model, engine_dir = model_pair
    engine = _engine(engine_dir, max_num_tokens)
    prompts = _prompts(engine.spec.model.vocab_size)
    # in-flight: requests that score their prompt beside ones that do not, and one that only scores
    mixed = [SamplingParams(max_tokens=3, temperature=0.0, prompt_logprobs=TOP_K),
             SamplingParams(max_tokens=2, temperature=0.0),
             SamplingParams(max_tokens=0, prompt_logprobs=TOP_K)]
    requests = [engine.add_request(p, mixed[i % 3]) for i, p in enumerate(prompts)]
    while engine.has_unfinished_requests():
        engine.step()
    for prompt, request in zip(prompts, requests):
        if request.params.prompt_logprobs is None:
            assert request.prompt_logprobs is None
            continue
        _check_against_transformers(hf_model, prompt, request.prompt_logprobs)
    only_scored = [r for r in requests if r.params.max_tokens == 0]
    assert all(r.output_token_ids == [] and r.finish_reason == "length" for r in only_scored)
    assert engine.stats.kv_blocks_used == 0


def test_a_cached_prefix_is_still_scored(model_pair):
    hf_model, engine_dir = model_pair
    engine = _engine(engine_dir)
    prompt = _prompts(engine.spec.model.vocab_size)[-1]  # 47 tokens: 5 full blocks of 8
    _run(engine, [prompt], SamplingParams(max_tokens=1, temperature=0.0))
    (scored,) = _run(engine, [prompt], SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=TOP_K))
    _check_against_transformers(hf_model, prompt, scored.prompt_logprobs)
    (again,) = _run(engine, [prompt], SamplingParams(max_tokens=1, temperature=0.0))
    assert engine.stats.prefix_cache_hits >= 40, "requests without prompt scoring still hit the cache"


def test_outputs_carry_prompt_logprobs_and_n_samples_share_them(tiny_engine):
    from ingot.llm import LLM

    llm = LLM(tiny_engine, device="cpu")
    prompt = list(range(20, 40))
    (out,) = llm.generate([prompt], SamplingParams(max_tokens=4, temperature=1.0, seed=3, n=3, prompt_logprobs=0))
    assert len(out.outputs) == 3 and out.prompt_logprobs[0] is None
    assert [list(e) for e in out.prompt_logprobs[1:]] == [[t] for t in prompt[1:]], "the actual token only (k=0)"
    (zero,) = llm.generate([prompt], SamplingParams(max_tokens=0, prompt_logprobs=1))
    assert zero.outputs[0].token_ids == [] and zero.finish_reason == "length"
    assert zero.prompt_logprobs[1:] and all(len(e) in (1, 2) for e in zero.prompt_logprobs[1:])


@pytest.mark.parametrize("field,value", [("prompt_logprobs", -1), ("prompt_logprobs", 21), ("logprobs", 21),
                                         ("max_tokens", -1)])
def test_out_of_range_counts_are_refused_naming_the_field(field, value):
    from ingot.errors import RequestError

    with pytest.raises(RequestError, match=rf"SamplingParams.{field}={value} is invalid"):
        SamplingParams(**{field: value})
