"""Where the server's models come from: a Triton-style model repository, or one engine directory.

    DIR/                          ingot serve --model-repository DIR
      NAME/                       one folder per model; its name is the model name clients send
        model_config.json         optional: version_policy and the KV-cache memory of each version
        1/  engine.json ...       numeric version folders, each an engine as `ingot build -o` writes it
        2/  engine.json ...

model_config.json (every key optional) takes Triton's version_policy in its JSON form:

    {"version_policy": {"latest": {"num_versions": 2}}     the N highest versions (default: latest 1)
                     | {"all": {}}                          every version folder
                     | {"specific": {"versions": [1, 3]}},  exactly these
     "kv_cache_fraction": 0.2,   of the device's memory, for each loaded version's KV cache
     "kv_cache_bytes": 1073741824}   or a byte figure (one of the two; default: the server's flags)

As in Triton, folders that are not positive integers without a leading zero are not versions, and
only the versions the policy selects must hold an engine. A model's folder is read again when it is
loaded (POST /v2/repository/models/NAME/load), so a new version or policy takes effect then.
Every layout error is a RepositoryError naming the path and the fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ingot.engine_format import ENGINE_JSON
from ingot.errors import ConfigError

MODEL_CONFIG = "model_config.json"
CONFIG_KEYS = ("name", "version_policy", "kv_cache_fraction", "kv_cache_bytes")
LAYOUT = "DIR/NAME/VERSION/engine.json"


class RepositoryError(ConfigError):
    """The repository's layout or a model's model_config.json is wrong."""


@dataclass(frozen=True)
class KVRequest:
    """How much memory one version's KV cache asks for: a fraction of the device, bytes, or neither
    (then the server's default share)."""

    fraction: float | None = None
    bytes: int | None = None

    def describe(self) -> str:
        if self.bytes is not None:
            return f"kv_cache_bytes {self.bytes}"
        return "a default share" if self.fraction is None else f"kv_cache_fraction {self.fraction:g}"


@dataclass(frozen=True)
class VersionPolicy:
    """Triton's version_policy: which version folders of a model are served."""

    kind: str = "latest"  # latest | all | specific
    num_versions: int = 1  # latest
    versions: tuple[int, ...] = ()  # specific

    def select(self, available: list[int]) -> list[int]:
        if self.kind == "all":
            return sorted(available)
        if self.kind == "latest":
            return sorted(available)[-self.num_versions:]
        return sorted(self.versions)


@dataclass(frozen=True)
class ModelEntry:
    """One model as its source describes it now: the engine of every version to serve."""

    name: str
    versions: dict[str, Path]  # version ("1", "2", ...) -> engine directory
    kv: KVRequest
    draft_engine: Path | None = None  # a draft model for speculative decoding (one-engine serving only)


class SingleEngine:
    """`ingot serve ENGINE`: one model, version 1, always the same engine directory."""

    def __init__(self, name: str, engine_dir: Path | str | None, kv: KVRequest = KVRequest(),
                 draft_engine: Path | str | None = None) -> None:
        self.entry = ModelEntry(name, {"1": Path(engine_dir or ".")}, kv,
                                None if draft_engine is None else Path(draft_engine))

    def names(self) -> list[str]:
        return [self.entry.name]

    def read_all(self) -> list[ModelEntry]:
        return [self.entry]

    def read(self, name: str) -> ModelEntry:
        if name != self.entry.name:
            raise RepositoryError(f"failed to load '{name}': this server serves only '{self.entry.name}' "
                                  "(start it with --model-repository DIR to serve several models)")
        return self.entry


class Repository:
    """`ingot serve --model-repository DIR`: every model folder under DIR (see the module docstring)."""

    def __init__(self, root: Path | str, default_kv: KVRequest = KVRequest()) -> None:
        self.root, self.default_kv = Path(root), default_kv
        if not self.root.is_dir():
            raise RepositoryError(f"--model-repository {self.root}: no such directory; give the folder that "
                                  f"holds one folder per model ({LAYOUT})")

    def names(self) -> list[str]:
        """The model folders now present (dot-folders and files are skipped, as Triton does)."""
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def read_all(self) -> list[ModelEntry]:
        names = self.names()
        if not names:
            raise RepositoryError(f"--model-repository {self.root} holds no model folders; put each engine at "
                                  f"{LAYOUT} (`ingot build MODEL -o {self.root}/NAME/1`)")
        return [self.read(name) for name in names]

    def read(self, name: str) -> ModelEntry:
        folder = self.root / name
        if not folder.is_dir():
            raise RepositoryError(f"failed to load '{name}': {folder} does not exist; the repository's models are "
                                  f"{self.names()}")
        if (folder / ENGINE_JSON).is_file():
            raise RepositoryError(f"{folder} is an engine, not a model folder: move it into {folder}/1/ "
                                  f"(the layout is {LAYOUT})")
        policy, kv = _read_config(folder, name, self.default_kv)
        available = _version_folders(folder)
        if not available:
            raise RepositoryError(f"{folder} holds no version folders: put its engine in {folder}/1/ (versions "
                                  "are positive integers without leading zeros)")
        missing = [v for v in policy.versions if v not in available] if policy.kind == "specific" else []
        if missing:
            raise RepositoryError(f"{folder / MODEL_CONFIG}: version_policy.specific.versions names {missing}, but "
                                  f"{folder} has versions {sorted(available)}; name existing versions")
        versions = {}
        for version in policy.select(available):
            engine = folder / str(version)
            if not (engine / ENGINE_JSON).is_file():
                raise RepositoryError(f"{engine} has no {ENGINE_JSON}: write an engine there with "
                                      f"`ingot build MODEL -o {engine}`, or remove the folder")
            versions[str(version)] = engine
        return ModelEntry(name, versions, kv)


def _version_folders(folder: Path) -> list[int]:
    return [int(p.name) for p in folder.iterdir()
            if p.is_dir() and p.name.isdigit() and p.name.isascii() and not p.name.startswith("0")]


def _read_config(folder: Path, name: str, default_kv: KVRequest) -> tuple[VersionPolicy, KVRequest]:
    path = folder / MODEL_CONFIG
    if not path.is_file():
        return VersionPolicy(), default_kv
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RepositoryError(f"{path}: cannot read it as JSON ({exc}); fix or remove the file") from None
    if not isinstance(config, dict):
        raise RepositoryError(f"{path}: must be a JSON object with the keys {list(CONFIG_KEYS)}")
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise RepositoryError(f"{path}: unknown keys {unknown}; allowed: {list(CONFIG_KEYS)}")
    if config.get("name", name) != name:
        raise RepositoryError(f"{path}: name {config['name']!r} differs from its folder's name {name!r}; "
                              "rename one or drop the key")
    return _policy(path, config.get("version_policy")), _kv(path, config, default_kv)


def _policy(path: Path, raw) -> VersionPolicy:
    usage = ('give one of {"latest": {"num_versions": N}}, {"all": {}}, '
             '{"specific": {"versions": [1, 2]}}')
    if raw is None:
        return VersionPolicy()
    if not isinstance(raw, dict) or len(raw) != 1 or not isinstance(next(iter(raw.values())), dict):
        raise RepositoryError(f"{path}: version_policy {json.dumps(raw)} is not a policy; {usage}")
    (kind, body), = raw.items()
    if kind == "all" and not body:
        return VersionPolicy("all")
    if kind == "latest" and set(body) <= {"num_versions"}:
        count = body.get("num_versions", 1)
        if not _positive_int(count):
            raise RepositoryError(f"{path}: version_policy.latest.num_versions={count!r} must be an integer >= 1")
        return VersionPolicy("latest", num_versions=count)
    if kind == "specific" and set(body) == {"versions"}:
        versions = body["versions"]
        if not (isinstance(versions, list) and versions and all(_positive_int(v) for v in versions)):
            raise RepositoryError(f"{path}: version_policy.specific.versions={versions!r} must be a non-empty "
                                  "list of version numbers (integers >= 1)")
        return VersionPolicy("specific", versions=tuple(sorted(set(versions))))
    raise RepositoryError(f"{path}: version_policy {json.dumps(raw)} is not a policy; {usage}")


def _kv(path: Path, config: dict, default_kv: KVRequest) -> KVRequest:
    fraction, size = config.get("kv_cache_fraction"), config.get("kv_cache_bytes")
    if fraction is not None and size is not None:
        raise RepositoryError(f"{path}: give kv_cache_fraction or kv_cache_bytes, not both")
    if fraction is not None:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise RepositoryError(f"{path}: kv_cache_fraction={fraction!r} must be a number in (0, 1] "
                                  "(a fraction of the device's memory)")
        return KVRequest(fraction=float(fraction))
    if size is not None:
        if not _positive_int(size):
            raise RepositoryError(f"{path}: kv_cache_bytes={size!r} must be an integer >= 1")
        return KVRequest(bytes=size)
    return default_kv


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
