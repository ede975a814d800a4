"""lm-evaluation-harness in tests: never reach a network (the machines have none)."""

from __future__ import annotations

import sys

import pytest


def go_offline(mp: pytest.MonkeyPatch) -> None:
    """The env vars, and the flags huggingface_hub and datasets already read from them at import:
    without the flags, a tokenizer lookup retries the network for ~40 s."""
    mp.setenv("HF_DATASETS_OFFLINE", "1")
    mp.setenv("HF_HUB_OFFLINE", "1")
    for module, flags in (("huggingface_hub.constants", ["HF_HUB_OFFLINE"]),
                          ("datasets.config", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])):
        if (loaded := sys.modules.get(module)) is not None:
            for flag in flags:
                mp.setattr(loaded, flag, True)
