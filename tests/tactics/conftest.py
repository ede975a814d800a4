"""CPU tests of ingot/tactics; the GEMM kernel runs in Triton's interpreter.

The interpreter is chosen when a kernel is decorated (when ingot.kernels is first imported), so
TRITON_INTERPRET=1 is set here, before any test module imports it, where there is no CUDA
(tests/gpu/test_gemm.py checks the compiled kernel). Tests of the tuning loop need neither.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import torch

if (importlib.util.find_spec("triton") is not None and not torch.cuda.is_available()
        and "ingot.kernels" not in sys.modules):
    os.environ["TRITON_INTERPRET"] = "1"
