"""Dataset loaders named by the task YAMLs (`custom_dataset: !function utils.load_ingot_mc`).

lm-eval imports this file by path, not as part of the ingot package, so it must stand alone.
The JSONL is read from beside this file: no hub, no network, wherever ingot is installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets

HERE = Path(__file__).resolve().parent


def load_jsonl(name: str) -> datasets.DatasetDict:
    with open(HERE / f"{name}.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


# lm-eval calls custom_dataset(**metadata, **dataset_kwargs); the metadata (task version, and
# model_args when simple_evaluate builds the TaskManager) is not needed here.
def load_ingot_mc(**_metadata) -> datasets.DatasetDict:
    return load_jsonl("ingot_mc")


def load_ingot_gen(**_metadata) -> datasets.DatasetDict:
    return load_jsonl("ingot_gen")
