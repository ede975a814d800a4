"""Every environment variable ingot reads, read here and nowhere else."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where `LLM(checkpoint)` builds engines: $INGOT_CACHE_DIR, else ~/.cache/ingot."""
    root = os.environ.get("INGOT_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "ingot"


def num_cpu_threads() -> int | None:
    """$INGOT_NUM_THREADS caps torch's CPU threads; unset leaves torch's default."""
    value = os.environ.get("INGOT_NUM_THREADS")
    return int(value) if value else None
