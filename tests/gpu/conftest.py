"""GPU tests: every Triton kernel against the torch reference on a CUDA device.

Left out entirely (not even imported) without CUDA or without triton, and when the CPU kernel
tests have switched this process to Triton's interpreter.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

collect_ignore_glob: list[str] = []
if (not torch.cuda.is_available() or importlib.util.find_spec("triton") is None
        or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")):
    collect_ignore_glob = ["test_*.py"]


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/gpu/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.gpu)
