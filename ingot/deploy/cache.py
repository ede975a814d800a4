"""Build a profile once into the cache; later starts find it by key.

The key is (checkpoint fingerprint, device, profile flags, ingot version), hashed; the engine lives
in $INGOT_CACHE_DIR/deploy/MODEL-PROFILE-HASH. Completeness needs no marker of its own: the
builder assembles an engine in a hidden directory and renames it into place after engine.json is
written (ingot/builder/build.py), so an interrupted build leaves no engine.json at the key's path.
Two starts of the same key at once build it once: the second waits on the first's lock file
(flock, released by the kernel if the builder dies) and then finds the engine.

Checkpoint fingerprint:
- a folder: every file of at most FULL_HASH_LIMIT bytes (config.json, tokenizer and generation
  config, the safetensors index) by the SHA-256 of its bytes; a larger one (the weights) by
  (name, size, mtime_ns). Hashing gigabytes of weights would cost seconds to minutes at every
  start, which the reuse is meant to save; any rewrite of a weight file (a download, a copy, an
  edit) changes its mtime, and a changed config changes its hash.
- a .gguf file: (name, size, mtime_ns), for the same reason.
- a preset: its name and the installed version of each package that carries it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

from ingot import envs
from ingot.deploy.profiles import Profile, parse_flags
from ingot.engine_format import ENGINE_JSON

FULL_HASH_LIMIT = 1 << 20
logger = logging.getLogger("ingot.deploy")


def checkpoint_fingerprint(model: str) -> dict:
    path = Path(model).expanduser()
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file() and not _hidden(f.relative_to(path)))
        return {"folder": {str(f.relative_to(path)): _file_fingerprint(f) for f in files}}
    if path.is_file():
        return {"file": {path.name: _stat(path)}}
    return {"preset": _preset_versions(model)}


def cache_key(model: str, machine, profile: Profile) -> dict:
    """Everything an engine in the cache was built from; a change in any field builds anew."""
    import ingot

    return {"checkpoint": checkpoint_fingerprint(model), "device": machine.key, "profile": profile.name,
            "flags": list(profile.flags), "ingot": ingot.__version__}


def deployed_engine(model: str, machine, profile: Profile) -> Path:
    """The cached engine of (model, machine, profile), built first when the cache lacks it."""
    started = time.perf_counter()
    key = cache_key(model, machine, profile)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    engine_dir = envs.cache_dir() / "deploy" / f"{_slug(model)}-{profile.name}-{digest}"
    if not (engine_dir / ENGINE_JSON).is_file():
        with _exclusive(engine_dir):
            if not (engine_dir / ENGINE_JSON).is_file():  # else another start built it while this one waited
                logger.info("building %s for %s, profile %s, into %s (key %s); later starts reuse it", model,
                            machine.key, profile.name, engine_dir, digest)
                _build(model, engine_dir, machine, profile)
                # Beside the engine, for a person looking into the cache: what the hash was made of.
                engine_dir.with_name(engine_dir.name + ".key.json").write_text(
                    json.dumps(key, indent=1, sort_keys=True))
                logger.info("built cached engine %s (key %s) in %.3f s", engine_dir, digest,
                            time.perf_counter() - started)
                return engine_dir
    logger.info("reusing cached engine %s (key %s: ingot %s, %s, profile %s), found in %.3f s", engine_dir,
                digest, key["ingot"], key["device"], profile.name, time.perf_counter() - started)
    return engine_dir


@contextlib.contextmanager
def _exclusive(engine_dir: Path) -> Iterator[None]:
    """Hold ENGINE_DIR.lock while building; a start that finds it held says so and waits."""
    engine_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(engine_dir.with_name(engine_dir.name + ".lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("another start is building %s; waiting for it", engine_dir)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _build(model: str, engine_dir: Path, machine, profile: Profile) -> None:
    from ingot.builder.build import build_engine
    from ingot.commands.build import build_options

    options = build_options(parse_flags(profile.flags))
    options["device"] = machine.device
    build_engine(model, engine_dir, **options)


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _file_fingerprint(path: Path) -> str | list:
    if path.stat().st_size <= FULL_HASH_LIMIT:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return _stat(path)


def _stat(path: Path) -> list:
    st = path.stat()
    return [path.name, st.st_size, st.st_mtime_ns]


def _preset_versions(name: str) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    from ingot.builder.presets import PRESETS, canonical_name

    key = canonical_name(name)
    if key is None:  # neither a path nor a preset: the builder's error names the choices
        from ingot.builder.checkpoint import load_checkpoint

        load_checkpoint(name)
    versions = {}
    for dist in PRESETS[key].distributions:
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            versions[dist] = None  # resolve_preset already said how to install it
    return {"name": key, "packages": versions}


def _slug(model: str) -> str:
    name = Path(model).name or model
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip(".") or "model"


def deploy(model: str, device: str | None = None, profile_name: str | None = None) -> Path:
    """`ingot serve CHECKPOINT_OR_PRESET`: detect the machine, choose a profile (or take the named
    one), and return its cached engine, built first if needed."""
    from ingot.deploy.machine import detect_machine
    from ingot.deploy.profiles import candidate_profiles, choose_profile, model_shape

    machine = detect_machine(device)
    profile, why = choose_profile(candidate_profiles(model_shape(model), machine), profile_name)
    logger.info("%s on %s: profile %s (%s)", model, machine.describe(), profile.name, why)
    return deployed_engine(model, machine, profile)
