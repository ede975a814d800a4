"""The verify path of the step records, through the real engine: a proposer puts draft tokens on
requests, the scheduler schedules 1 + k tokens, the runner computes and verifies them, the engine
appends the accepted ones and rewinds the rest. Greedy output must equal plain decoding exactly,
whatever is drafted; the acceptance rule must leave the sampling distribution unchanged."""

from __future__ import annotations

import random

import pytest
import torch

from ingot.config import CacheConfig, SchedulerConfig
from ingot.engine_format import read_spec
from ingot.layers.sampler import Sampler, SamplingRow
from ingot.runtime.engine import LLMEngine
from ingot.sampling_params import SamplingParams
from ingot.speculative.verify import emitted_tokens

PROMPTS = [[5, 9, 2], list(range(40, 72)) + [7], [300, 1, 1, 1, 1, 1], list(range(100, 117)), [250]]


def _engine(engine_dir, policy="max_utilization", cache_bytes=None, max_num_tokens=64):
    build = read_spec(engine_dir).build
    lookahead = 0 if cache_bytes else None  # a small pool is there to preempt: admit whatever fits now
    return LLMEngine(engine_dir, CacheConfig(max_cache_bytes=cache_bytes), device="cpu", async_output=False,
                     scheduler_config=SchedulerConfig.for_engine(build, policy, max_num_tokens=max_num_tokens,
                                                                 admission_lookahead=lookahead))


def _run(engine, params, propose=None):
    requests = [engine.add_request(p, params) for p in PROMPTS]
    while engine.has_unfinished_requests():
        if propose is not None:
            for request in engine.scheduler.running:
                if request.num_computed_tokens == request.num_tokens - 1:  # decoding
                    request.draft_tokens = propose(request)
        engine.step()
    return requests


@pytest.fixture(scope="module")
def plain(tiny_engine):
    params = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True, logprobs=2)
    return {tuple(r.prompt_token_ids): r for r in _run(_engine(tiny_engine), params)}


def _oracle(plain, rng, wrong_rate):
    """Drafts that follow the true continuation, each token wrong with probability wrong_rate."""
    def propose(request):
        truth = plain[tuple(request.prompt_token_ids)].output_token_ids[request.num_output_tokens:]
        drafts = truth[: rng.randint(0, 5)]
        return [t if rng.random() >= wrong_rate else (t + 1) % 311 for t in drafts]
    return propose


@pytest.mark.parametrize("case", [
    dict(wrong_rate=0.0), dict(wrong_rate=0.3), dict(wrong_rate=1.0),
    dict(wrong_rate=0.3, policy="guaranteed_no_evict"),
    dict(wrong_rate=0.3, cache_bytes=20 * 3072),  # a pool this small preempts and recomputes
    dict(wrong_rate=0.3, max_num_tokens=5),  # drafts trimmed to the step's token budget
])
def test_greedy_output_with_drafts_equals_plain_decoding(tiny_engine, plain, case):
    case = dict(case)
    rng = random.Random(len(str(case)))
    small_pool = "cache_bytes" in case
    engine = _engine(tiny_engine, case.pop("policy", "max_utilization"), case.pop("cache_bytes", None),
                     case.pop("max_num_tokens", 64))
    params = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True, logprobs=2)
    for request in _run(engine, params, _oracle(plain, rng, case["wrong_rate"])):
        want = plain[tuple(request.prompt_token_ids)]
        assert request.output_token_ids == want.output_token_ids
        for got, expected in zip(request.logprobs, want.logprobs):
            assert got.keys() == expected.keys()
            assert all(abs(got[t] - expected[t]) < 1e-4 for t in got)
    stats = engine.stats
    assert stats.draft_tokens_total > 0 and stats.kv_blocks_used == 0 and stats.running == 0
    assert (stats.preempted_total > 0) == small_pool
    if case["wrong_rate"] == 0.0:
        assert stats.accepted_draft_tokens_total == stats.draft_tokens_total
    elif case["wrong_rate"] == 1.0:
        assert stats.accepted_draft_tokens_total == 0
    else:
        assert 0 < stats.accepted_draft_tokens_total < stats.draft_tokens_total


def test_accepted_drafts_save_steps_and_stops_cut_inside_a_step(tiny_engine, plain):
    prompt = PROMPTS[1]
    truth = plain[tuple(prompt)].output_token_ids
    stop_token = truth[6]
    params = SamplingParams(max_tokens=20, temperature=0.0, stop_token_ids=[stop_token])
    engine = _engine(tiny_engine)
    request = engine.add_request(prompt, params)
    steps = 0
    while engine.has_unfinished_requests():
        if request.num_computed_tokens == request.num_tokens - 1:
            request.draft_tokens = truth[request.num_output_tokens:request.num_output_tokens + 4]
        engine.step()
        steps += 1
    first_stop = truth.index(stop_token)
    assert request.output_token_ids == truth[: first_stop + 1], "tokens after the stop token are not emitted"
    assert request.finish_reason == "stop" and steps <= 1 + -(-(first_stop + 1) // 5) + 1


def test_drafts_never_overrun_max_tokens_or_the_engine_length(tiny_engine, plain):
    engine = _engine(tiny_engine)
    prompt = PROMPTS[0]
    truth = plain[tuple(prompt)].output_token_ids
    request = engine.add_request(prompt, SamplingParams(max_tokens=7, temperature=0.0, ignore_eos=True))
    while engine.has_unfinished_requests():
        if request.num_computed_tokens == request.num_tokens - 1:
            request.draft_tokens = truth[request.num_output_tokens:] + [1, 2, 3]
        engine.step()
    assert request.output_token_ids == truth[:7] and request.finish_reason == "length"


def test_acceptance_rule_keeps_the_target_distribution():
    """With drafts that are often wrong, the first token emitted is still distributed as p:
    P(emit d) = p(d) (accepted), P(emit x != d) = p(x) (rejected, resampled without d)."""
    torch.manual_seed(0)
    vocab, trials, draft = 6, 20000, 2
    logits = torch.tensor([[1.0, 0.5, 2.0, -1.0, 0.0, 1.5]]).repeat(2, 1)
    p = torch.softmax(logits[0], -1)
    params = SamplingParams(temperature=1.0, max_tokens=4)
    generator = torch.Generator().manual_seed(1)
    rows = [SamplingRow(params, [0], [], generator), SamplingRow(params, [0], [draft], generator)]
    sampler, counts = Sampler(), torch.zeros(vocab)
    accepted_total = 0
    for _ in range(trials):
        targets = sampler(logits, rows).token_ids
        emitted = emitted_tokens([draft], targets)
        accepted_total += len(emitted) - 1
        counts[emitted[0]] += 1  # the draft if accepted, else t_0 != draft
    assert abs(accepted_total / trials - p[draft].item()) < 0.015
    assert (counts / trials - p).abs().max() < 0.015


def test_runner_returns_hidden_states_of_sampled_positions_when_asked(tiny_engine):
    engine = _engine(tiny_engine)
    engine.runner.want_hidden_states = True
    engine.add_request([5, 6, 7], SamplingParams(max_tokens=1, temperature=0.0))
    (result,) = list(engine.runner.execute(engine.scheduler.schedule()))
    assert result.hidden_states.shape == (1, engine.spec.model.hidden_size)
    logits = engine.model.compute_logits(result.hidden_states)
    assert result.sampled[0].token_ids == [int(logits.argmax())]
