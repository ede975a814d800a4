"""lm-evaluation-harness, unchanged, against a real `ingot serve` of SmolLM2 through its
`local-completions` model: a log-likelihood task and a generation task produce scores, and the
log-likelihoods the server reported equal transformers' on the same tokens."""

from __future__ import annotations

import math

import pytest
import torch

from tests.helpers_lm_eval import go_offline

pytestmark = pytest.mark.slow
LIMIT = {"ingot_mc": 48, "ingot_gen": 24}


@pytest.fixture(scope="module")
def results(smol_server):
    pytest.importorskip("lm_eval")
    import datasets  # noqa: F401  (imported before going offline, so its flags can be set)
    import lm_eval
    from lm_eval.tasks import TaskManager

    import ingot.eval.lm_eval_tasks as tasks

    with pytest.MonkeyPatch.context() as mp:
        go_offline(mp)
        manager = TaskManager(include_path=str(tasks.__path__[0]), include_defaults=False)
        samples = {}
        for task, limit in LIMIT.items():  # one task per run: each with its own item limit
            run = lm_eval.simple_evaluate(
                model="local-completions", tasks=[task], task_manager=manager, limit=limit, log_samples=True,
                model_args=dict(base_url=f"{smol_server.url}/v1/completions", model="smollm2",
                                tokenizer_backend="remote", tokenized_requests=True, num_concurrent=4,
                                max_retries=1),
                random_seed=None, numpy_random_seed=None, torch_random_seed=None, fewshot_random_seed=None)
            samples[task] = run["samples"][task]
        return samples


def test_both_tasks_produce_scores(results):
    mc, gen = results["ingot_mc"], results["ingot_gen"]
    assert len(mc) == LIMIT["ingot_mc"] and len(gen) == LIMIT["ingot_gen"]
    accuracy = sum(s["acc"] for s in mc) / len(mc)
    exact = sum(s["exact_match"] for s in gen) / len(gen)
    # SmolLM2 through lm-eval's hf model scored acc 0.56 and exact_match 0.67 on the full sets
    assert 0.35 < accuracy <= 1 and 0.3 < exact <= 1, (accuracy, exact)


def test_loglikelihoods_equal_transformers_on_the_same_tokens(results, smollm2_engine, smollm2_transformers):
    """What lm-eval summed from the server's echo logprobs, recomputed with transformers (fp32)
    on the tokens lm-eval built: the whole context + continuation, split at len(context)."""
    from ingot.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_dir(smollm2_engine)
    model = smollm2_transformers[0]
    compared = 0
    for sample in results["ingot_mc"][:12]:
        for (context, continuation), (served, _) in zip(sample["arguments"], sample["filtered_resps"]):
            whole = tokenizer.encode(context + continuation, add_special_tokens=False)
            ctx_len = len(tokenizer.encode(context, add_special_tokens=False))
            with torch.no_grad():
                logprobs = torch.log_softmax(model(torch.tensor([whole])).logits[0].double(), dim=-1)
            expected = sum(logprobs[i - 1, whole[i]].item() for i in range(ctx_len, len(whole)))
            assert math.isclose(served, expected, abs_tol=2e-3), (context, continuation, served, expected)
            compared += 1
    assert compared == 48
