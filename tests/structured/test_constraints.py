"""Constraints on the tiny random engine (CPU, seconds): whatever the random weights prefer, the
mask keeps the output inside the grammar; unconstrained requests sharing the batch are untouched."""

from __future__ import annotations

import re

import pytest
import torch

from ingot import LLM, SamplingParams
from ingot.errors import RequestError
from ingot.structured import StructuredOutput
from ingot.structured.grammar import apply_token_bitmask, bitmask_words


@pytest.fixture(scope="module")
def tiny_llm(tiny_engine):
    return LLM(tiny_engine)


def _reference_mask(logits: torch.Tensor, rows: list[int], bitmask: torch.Tensor) -> torch.Tensor:
    out = logits.clone()
    for k, row in enumerate(rows):
        for token in range(logits.shape[1]):
            if not (int(bitmask[k, token // 32]) >> (token % 32)) & 1:
                out[row, token] = float("-inf")
    return out


@pytest.mark.parametrize("num_rows,vocab", [(1, 32), (3, 33), (5, 100), (4, 257)])
def test_apply_token_bitmask_matches_reference(num_rows, vocab):
    gen = torch.Generator().manual_seed(num_rows * vocab)
    logits = torch.randn(num_rows, vocab, generator=gen)
    rows = list(range(0, num_rows, 2))
    bitmask = torch.randint(-2**31, 2**31 - 1, (len(rows), bitmask_words(vocab)), generator=gen, dtype=torch.int64)
    bitmask = bitmask.to(torch.int32)
    before = logits.clone()
    out = apply_token_bitmask(logits, rows, bitmask)
    assert torch.equal(out, _reference_mask(logits, rows, bitmask))
    assert torch.equal(logits, before)  # not modified in place


@pytest.mark.parametrize("make,field", [
    (lambda: StructuredOutput.json({"type": "objec"}), "structured"),
    (lambda: StructuredOutput.json("{not json", field="response_format.json_schema.schema"),
     "response_format.json_schema.schema"),
    (lambda: StructuredOutput.regex("a(b", field="guided_regex"), "guided_regex"),
    (lambda: StructuredOutput.ebnf("root ::= missing", field="guided_grammar"), "guided_grammar"),
    (lambda: StructuredOutput.choice([], field="guided_choice"), "guided_choice"),
])
def test_bad_specs_name_the_field(make, field):
    with pytest.raises(RequestError, match=rf"^{re.escape(field)}: "):
        make()


def test_structured_turns_speculation_off_and_refuses_ignore_eos():
    assert SamplingParams(structured=StructuredOutput.regex("a+")).speculative is False
    with pytest.raises(RequestError, match="ignore_eos"):
        SamplingParams(structured=StructuredOutput.regex("a+"), ignore_eos=True)
    with pytest.raises(RequestError, match="structured"):
        SamplingParams(structured={"type": "json_object"})


def test_regex_and_choice_always_match(tiny_llm):
    pattern = r"[a-c]{2,5}-[0-9]{1,3}"
    choices = ["alpha", "beta", "gamma delta"]
    regex = SamplingParams(max_tokens=24, temperature=1.0, seed=3, n=4, structured=StructuredOutput.regex(pattern))
    choice = SamplingParams(max_tokens=24, temperature=1.0, seed=4, n=4, structured=StructuredOutput.choice(choices))
    greedy = SamplingParams(max_tokens=24, temperature=0.0, structured=StructuredOutput.regex(pattern))
    prompts = ["hello", "the answer is", "x y z"]
    for params in (regex, choice, greedy):
        for out in tiny_llm.generate(prompts, params):
            for sample in out.outputs:
                assert sample.finish_reason == "stop", sample
                if params is choice:
                    assert sample.text in choices
                else:
                    assert re.fullmatch(pattern, sample.text), sample.text


def test_unconstrained_rows_unchanged_by_constrained_neighbours(tiny_llm):
    prompts = ["one two three", "four five", "six"]
    plain = [SamplingParams(max_tokens=12, temperature=0.0), SamplingParams(max_tokens=12, temperature=0.8, seed=9)]
    alone = [tiny_llm.generate(prompts, params) for params in plain]
    engine = tiny_llm.engine
    constrained = SamplingParams(max_tokens=12, temperature=0.9, seed=2, structured=StructuredOutput.regex("[0-9]+"))
    mixed = [[engine.add_request(p, params) for p in prompts] for params in plain]
    extra = [engine.add_request(p, constrained) for p in prompts]
    while engine.has_unfinished_requests():
        engine.step()
    for outputs, requests in zip(alone, mixed):
        assert [o.outputs[0].token_ids for o in outputs] == [list(r.output_token_ids) for r in requests]
    assert all(re.fullmatch("[0-9]+", r.output_text) for r in extra)
