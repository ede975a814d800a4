"""CPU tests of the Triton kernels, run in Triton's interpreter.

The interpreter is chosen when a kernel is decorated, i.e. when ingot.kernels is first imported,
so TRITON_INTERPRET=1 is set here, before any test module of this directory imports it. On a
machine with CUDA the directory is left out (tests/gpu checks the same kernels compiled), as it
is where triton is not installed.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest
import torch

collect_ignore_glob: list[str] = []
if importlib.util.find_spec("triton") is None or torch.cuda.is_available():
    collect_ignore_glob = ["test_*.py"]
elif "ingot.kernels" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"
else:  # imported compiled by something collected earlier: the interpreter can no longer be chosen
    collect_ignore_glob = ["test_*.py"]


def pytest_collection_modifyitems(items):
    # The interpreter indexes numpy arrays with 1-element arrays (its own deprecation noise).
    noise = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning")
    for item in items:
        if "tests/kernels/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(noise)
