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


def torchrun_rank() -> tuple[int, int, str, int, int] | None:
    """(rank, world size, master address, master port, local rank) when a launcher such as torchrun
    started this process as one rank of a job (it sets RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT,
    LOCAL_RANK); None otherwise."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    return (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), os.environ.get("MASTER_ADDR", "127.0.0.1"),
            int(os.environ.get("MASTER_PORT", "29500")), int(os.environ.get("LOCAL_RANK", "0")))


def skip_verify() -> bool:
    """$INGOT_SKIP_VERIFY=1 (`--skip-verify`): load weight files without checking their checksums."""
    return os.environ.get("INGOT_SKIP_VERIFY", "") not in ("", "0")


def set_skip_verify() -> None:
    """`--skip-verify`: this process and the rank processes it starts load without checksums."""
    os.environ["INGOT_SKIP_VERIFY"] = "1"


def api_key() -> str | None:
    """$INGOT_API_KEY: `ingot serve`'s API key when neither --api-key nor --api-key-file gives one (a key
    in the environment is not shown by ps, as a command-line flag is)."""
    return os.environ.get("INGOT_API_KEY") or None


def commit_override() -> str | None:
    """$INGOT_COMMIT: the commit a benchmark record names, for a copy of the tree without git state
    (a GPU machine that received the working tree only)."""
    return os.environ.get("INGOT_COMMIT") or None
