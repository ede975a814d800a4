"""Weight-file checksums: written into engine.json by the builder, checked by the loader.

A flipped bit in a weight file loads silently and answers wrongly; a checksum turns that into an
error naming the file and the bytes. Each rank file is hashed in chunks of CHUNK_BYTES (SHA-256
per chunk, the chunks in parallel threads: hashlib releases the GIL), so checking a 16 GB engine
costs about a second on a many-core host instead of the ~10 s one sequential SHA-256 takes.
$INGOT_SKIP_VERIFY=1 (`--skip-verify`) loads without checking, for trusted fast restarts.
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ingot.errors import EngineError

CHUNK_BYTES = 256 << 20
logger = logging.getLogger("ingot")


def file_checksum(path: Path) -> dict:
    """{"bytes": size, "chunk_bytes": CHUNK_BYTES, "sha256": [hex digest of each chunk]}."""
    size = path.stat().st_size
    return {"bytes": size, "chunk_bytes": CHUNK_BYTES, "sha256": _chunk_digests(path, size, CHUNK_BYTES)}


def verify_file(path: Path, recorded: dict, engine_dir: Path) -> None:
    """Raise EngineError when the file differs from its recorded checksum."""
    fix = (f"rebuild the engine (ingot build ... -o {engine_dir}), or set INGOT_SKIP_VERIFY=1 (--skip-verify) "
           "to load it as it is")
    size = path.stat().st_size
    if size != recorded["bytes"]:
        raise EngineError(f"engine file {path}: {size} bytes, but engine.json recorded {recorded['bytes']}; it was "
                          f"truncated or replaced; {fix}")
    chunk = recorded["chunk_bytes"]
    for index, (actual, expected) in enumerate(zip(_chunk_digests(path, size, chunk), recorded["sha256"])):
        if actual != expected:
            end = min((index + 1) * chunk, size) - 1
            raise EngineError(f"engine file {path}: bytes {index * chunk}-{end} do not match the SHA-256 recorded in "
                              f"engine.json (the file was modified or damaged); {fix}")


def _chunk_digests(path: Path, size: int, chunk: int) -> list[str]:
    def digest(offset: int) -> str:
        sha = hashlib.sha256()
        with open(path, "rb") as f:
            f.seek(offset)
            left = min(chunk, size - offset)
            while left:
                block = f.read(min(left, 16 << 20))
                if not block:
                    break
                sha.update(block)
                left -= len(block)
        return sha.hexdigest()

    offsets = list(range(0, size, chunk)) or [0]
    with ThreadPoolExecutor(max_workers=min(len(offsets), os.cpu_count() or 1, 16)) as pool:
        return list(pool.map(digest, offsets))
