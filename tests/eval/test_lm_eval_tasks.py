"""ingot's lm-eval tasks (ingot/eval/lm_eval_tasks) through lm-eval itself, offline, on CPU:
they load from the JSONL beside the YAML, render the intended prompts, regenerate byte for byte,
and run end to end with lm-eval's random `dummy` model."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest

import ingot.eval.lm_eval_tasks as tasks_pkg
from ingot.eval.lm_eval_tasks import make_items
from tests.helpers_lm_eval import go_offline as _go_offline

TASKS_DIR = Path(tasks_pkg.__file__).resolve().parent
MC_KINDS = {"add": 60, "sub": 38, "largest": 25, "smallest": 25, "opposite": 64, "capital": 50,
            "day": 14, "month": 24}
GEN_KINDS = {"count_up": 40, "skip_count": 40, "count_down": 20, "day": 7, "month": 12,
             "letter": 21, "sum": 60}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    _go_offline(monkeypatch)


@pytest.fixture(scope="module")
def task_manager():
    pytest.importorskip("lm_eval")  # in the test extra; a plain install still runs the regeneration test
    import datasets  # noqa: F401  (imported before going offline, so its flags can be set)
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False)


@pytest.fixture(scope="module")
def task_dict(task_manager):
    with pytest.MonkeyPatch.context() as mp:  # module scope: the autouse fixture is not active
        _go_offline(mp)
        return task_manager.load(["ingot_mc", "ingot_gen"])["tasks"]


def _docs(task) -> list[dict]:
    return list(task.test_docs())


def _requests_for(task, doc_id: str) -> list:
    task.build_all_requests(limit=None)
    return [inst for inst in task.instances if inst.doc["id"] == doc_id]


def test_item_counts_per_kind(task_dict):
    assert Counter(d["kind"] for d in _docs(task_dict["ingot_mc"])) == MC_KINDS
    assert Counter(d["kind"] for d in _docs(task_dict["ingot_gen"])) == GEN_KINDS


def test_ids_are_unique(task_dict):
    for name in ("ingot_mc", "ingot_gen"):
        ids = [d["id"] for d in _docs(task_dict[name])]
        assert len(ids) == len(set(ids)), name


def test_mc_items_have_four_distinct_spaced_choices(task_dict):
    task = task_dict["ingot_mc"]
    for doc in _docs(task):
        choices = task.doc_to_choice(doc)
        assert len(choices) == 4 and len(set(choices)) == 4, doc
        assert all(c.startswith(" ") and not c.startswith("  ") for c in choices), doc
        assert 0 <= task.doc_to_target(doc) < 4, doc


def test_gen_answers_are_one_number_or_word(task_dict):
    task = task_dict["ingot_gen"]
    for doc in _docs(task):
        target = task.doc_to_target(doc)
        assert target.isalnum() and " " not in target, doc
        assert not task.doc_to_text(doc).endswith(" "), doc


def test_mc_prompt_and_continuations_render_as_intended(task_dict):
    requests = _requests_for(task_dict["ingot_mc"], "capital-000")
    assert [r.arguments for r in requests] == [
        ("Question: What is the capital of France?\nAnswer:", " Copenhagen"),
        ("Question: What is the capital of France?\nAnswer:", " Stockholm"),
        ("Question: What is the capital of France?\nAnswer:", " Tokyo"),
        ("Question: What is the capital of France?\nAnswer:", " Paris"),
    ]
    assert requests[0].doc["gold"] == 3


def test_gen_prompt_renders_as_intended(task_dict):
    task = task_dict["ingot_gen"]
    (request,) = _requests_for(task, "day-000")
    context, gen_kwargs = request.arguments
    assert context == "Monday, Tuesday, Wednesday,"
    assert gen_kwargs["until"] == ["\n"] and gen_kwargs["max_gen_toks"] == 8
    assert gen_kwargs["do_sample"] is False and gen_kwargs["temperature"] == 0.0
    assert task.doc_to_target(request.doc) == "Thursday"


def test_gen_filter_takes_the_first_number_or_word(task_dict):
    (ensemble,) = task_dict["ingot_gen"]._filters
    docs = [{}] * 5
    responses = [[" 5, 6, 7"], [" and Thursday."], [" Thursday, Friday"], [" -3"], ["  "]]
    assert ensemble.filters[0]().apply(responses, docs) == [
        ["5"], ["Thursday"], ["Thursday"], ["-3"], ["[invalid]"]]


def test_make_items_regenerates_the_committed_files(tmp_path):
    for path in make_items.write_items(tmp_path):
        assert path.read_bytes() == (TASKS_DIR / path.name).read_bytes(), path.name


def test_jsonl_rows_are_the_loaded_rows(task_dict):
    lines = (TASKS_DIR / "ingot_mc.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == _docs(task_dict["ingot_mc"])


def test_dummy_model_runs_both_tasks_end_to_end(task_manager):
    import lm_eval

    # No seeds: lm-eval would otherwise reseed the process-wide random, numpy and torch RNGs.
    results = lm_eval.simple_evaluate(
        model="dummy", tasks=["ingot_mc", "ingot_gen"], limit=10, task_manager=task_manager,
        random_seed=None, numpy_random_seed=None, torch_random_seed=None,
        fewshot_random_seed=None)
    mc, gen = results["results"]["ingot_mc"], results["results"]["ingot_gen"]
    assert 0.0 <= mc["acc,none"] <= 1.0 and 0.0 <= mc["acc_norm,none"] <= 1.0
    assert gen["exact_match,first-word"] == 0.0  # dummy always answers "lol"
    assert results["n-samples"]["ingot_mc"]["effective"] == 10
    assert results["n-samples"]["ingot_gen"]["effective"] == 10
