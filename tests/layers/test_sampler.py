"""Sampler: filters, penalties, logprobs, seeding and the sampled distribution, on CPU."""

import itertools
import math

import pytest
import torch

from ingot.layers.sampler import Sampler, SamplingRow, apply_penalties, make_generator
from ingot.sampling_params import SamplingParams

sampler = Sampler()


def rows_for(params: SamplingParams, n: int, prompt=(), output=(), seeded=False):
    return [SamplingRow(params, list(prompt), list(output), make_generator(i, "cpu") if seeded else None)
            for i in range(n)]


def draw(logits_row: torch.Tensor, params: SamplingParams, n: int = 4000, seeded=False) -> torch.Tensor:
    torch.manual_seed(0)
    out = sampler(logits_row.expand(n, -1).clone(), rows_for(params, n, seeded=seeded))
    return torch.tensor(out.token_ids)


@pytest.fixture
def logits():
    return torch.randn(64, generator=torch.Generator().manual_seed(1)) * 3


def test_top_k_never_samples_outside_top_k(logits):
    tokens = draw(logits, SamplingParams(top_k=5))
    allowed = set(logits.topk(5).indices.tolist())
    assert set(tokens.tolist()) == allowed  # inside, and (4000 draws) every one of them reached


def test_top_p_never_samples_outside_nucleus(logits):
    probs = logits.softmax(-1)
    order = probs.argsort(descending=True)
    mass_above = probs[order].cumsum(0) - probs[order]
    nucleus = set(order[mass_above < 0.6].tolist())  # smallest top set reaching 0.6
    tokens = draw(logits, SamplingParams(top_p=0.6))
    assert set(tokens.tolist()) <= nucleus and len(set(tokens.tolist())) >= 2


def test_min_p_never_samples_below_floor(logits):
    params = SamplingParams(min_p=0.2, temperature=0.7)
    probs = (logits / 0.7).softmax(-1)
    tokens = draw(logits, params)
    assert (probs[tokens] >= 0.2 * probs.max()).all()
    assert (probs[tokens] < 0.5 * probs.max()).any()  # the filter is not stricter than asked


@pytest.mark.parametrize("temperature", [0.0, 1e-6, 1e-3])
def test_temperature_near_zero_is_greedy(logits, temperature):
    tokens = draw(logits, SamplingParams(temperature=temperature), n=50)
    assert (tokens == logits.argmax()).all()


def test_greedy_ties_take_lowest_id_and_mix_with_sampled_rows():
    logits = torch.tensor([[0.0, 5.0, 5.0, 1.0], [0.0, 0.0, 0.0, 9.0]])
    params = [SamplingParams(temperature=0), SamplingParams(temperature=1.0, top_k=1)]
    out = sampler(logits, [SamplingRow(p, [], [], None) for p in params])
    assert out.token_ids == [1, 3] and out.logprobs is None and out.top_logprobs is None


def test_seed_reproduces_regardless_of_batch(logits):
    target = SamplingParams(temperature=1.3, top_p=0.95, seed=1234)
    others = [SamplingParams(temperature=0.5, top_k=3), SamplingParams(temperature=0), SamplingParams(seed=7)]

    def run(position, n_others):
        gens = {}
        tokens = []
        for _ in range(20):
            params = [*others[:n_others]]
            params.insert(position, target)
            rows = [SamplingRow(p, [], [], gens.setdefault(i if p is not target else "t",
                                                             make_generator(p.seed, "cpu")))
                    for i, p in enumerate(params)]
            batch = torch.stack([logits + i for i in range(len(params))])
            batch[position] = logits
            tokens.append(sampler(batch, rows).token_ids[position])
        return tokens

    alone = run(0, 0)
    assert alone == run(2, 3) == run(1, 2)
    assert len(set(alone)) > 1  # it really sampled


def test_repetition_penalty_formula():
    logits = torch.tensor([[2.0, -2.0, 3.0, -1.0, 0.5, 4.0]])
    row = SamplingRow(SamplingParams(repetition_penalty=2.0), [0, 1], [3, 3], None)
    got = apply_penalties(logits, [row])[0].tolist()
    assert got == [1.0, -4.0, 3.0, -2.0, 0.5, 4.0]  # seen: positive / 2, negative * 2


def test_presence_and_frequency_penalty_formula():
    logits = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    rows = [SamplingRow(SamplingParams(presence_penalty=0.5, frequency_penalty=0.25), [2, 2], [0, 1, 1, 1], None),
            SamplingRow(SamplingParams(), [], [0, 0], None)]  # a row without penalties stays as it is
    got = apply_penalties(logits, rows).tolist()
    assert got[0] == pytest.approx([1 - 0.5 - 0.25, 1 - 0.5 - 0.75, 1.0, 1.0])  # prompt ids don't count
    assert got[1] == [1.0, 1.0, 1.0, 1.0]


def test_penalties_compose_and_skip_when_unused():
    logits = torch.tensor([[2.0, -1.0, 0.0]])
    row = SamplingRow(SamplingParams(repetition_penalty=1.5, presence_penalty=1.0, frequency_penalty=-0.5),
                      [1], [0, 0], None)
    assert apply_penalties(logits, [row])[0].tolist() == pytest.approx([2 / 1.5 - 1.0 + 1.0, -1.5, 0.0])
    plain = SamplingRow(SamplingParams(), [1], [0], None)
    assert apply_penalties(logits, [plain]) is logits  # no penalty in the batch: no work, no copy
    sampler(logits, [row])
    assert logits.tolist() == [[2.0, -1.0, 0.0]]  # the caller's logits are never modified


def test_logprobs_are_penalised_log_softmax_and_sorted(logits):
    batch = torch.stack([logits, logits, logits])
    params = [SamplingParams(logprobs=5, frequency_penalty=1.0, temperature=0.8),
              SamplingParams(logprobs=0, temperature=0),
              SamplingParams()]
    rows = [SamplingRow(params[0], [], [3, 3], None), SamplingRow(params[1], [], [], None),
            SamplingRow(params[2], [], [], None)]
    out = sampler(batch, rows)
    penalised = logits.clone()
    penalised[3] -= 2.0
    expected = penalised.log_softmax(-1)  # before temperature: the 0.8 does not show here
    assert out.logprobs[0] == pytest.approx(expected[out.token_ids[0]].item(), abs=1e-6)
    assert out.logprobs[1] == pytest.approx(logits.log_softmax(-1).max().item(), abs=1e-6)
    assert out.logprobs[2] is None and out.top_logprobs[2] == [] and out.top_logprobs[1] == []
    top = out.top_logprobs[0]
    assert [t for t, _ in top] == expected.topk(5).indices.tolist()
    assert [v for _, v in top] == pytest.approx(expected.topk(5).values.tolist(), abs=1e-6)
    assert all(a[1] >= b[1] for a, b in itertools.pairwise(top))


@pytest.mark.parametrize("seeded", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_sampled_distribution_is_right(temperature, seeded):
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    n = 4000 if seeded else 20000  # seeded rows draw one by one from their own generators
    tokens = draw(probs.log(), SamplingParams(temperature=temperature), n=n, seeded=seeded)
    freq = torch.bincount(tokens, minlength=4).float() / n
    target = probs ** (1 / temperature)
    target = target / target.sum()
    tolerance = 5 * math.sqrt(0.25 / n)  # five standard deviations of a frequency
    assert (freq - target).abs().max() < tolerance, (freq, target)


def test_top_p_renormalises_the_nucleus():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    tokens = draw(probs.log(), SamplingParams(top_p=0.75, top_k=3), n=20000)
    freq = torch.bincount(tokens, minlength=4).float() / 20000
    assert freq.tolist() == pytest.approx([0.625, 0.375, 0.0, 0.0], abs=0.02)


def test_make_generator():
    assert make_generator(None, "cpu") is None
    a, b = make_generator(3, "cpu"), make_generator(3, "cpu")
    assert torch.rand(4, generator=a).tolist() == torch.rand(4, generator=b).tolist()
