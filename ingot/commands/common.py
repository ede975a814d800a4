"""Helpers shared by CLI verbs."""

from __future__ import annotations

from pathlib import Path

from ingot.engine_format import ENGINE_JSON


def engine_or_build(model: str, device: str | None) -> Path:
    """An engine directory as given, or a checkpoint/preset built into the cache with a notice.
    Under torchrun, a rank other than 0 serves as a worker of the engine and exits here."""
    path = Path(model)
    if (path / ENGINE_JSON).is_file():
        from ingot.parallel.launch import become_worker_if_launched

        become_worker_if_launched(path, device)
        return path
    import sys

    from ingot.config import BuildConfig
    from ingot.llm import ensure_engine

    print(f"ingot: {model} is not an engine; building it into the cache (once)...", file=sys.stderr)
    return ensure_engine(model, BuildConfig(), device)
