"""--load-format dummy: random weights at a model's real shapes (ingot/random_weights.py), for
benchmarks without a hub: the config they come from, and their tokenizer.

Such an engine has no tokenizer unless `--tokenizer` gives one (a tokenizer.json, or a folder
holding one): it is copied in by the same code that copies a checkpoint's, so `ingot serve` and
`ingot bench serve` can send text to an engine of random weights.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch

from ingot.errors import CheckpointError, ConfigError
from ingot.random_weights import random_tensors

TOKENIZER_FIX = "pass a tokenizer.json file, or a folder holding one (with its tokenizer_config.json)"


def read_config_json(path: str | Path) -> dict:
    """CONFIG may be a config.json file or a folder holding one."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"--load-format dummy needs a config.json; {path} does not exist") from exc
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc


def dummy_tensors(shapes: dict[str, tuple[int, ...]], dtype: torch.dtype, device: str,
                  seed: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    """Engine-layout tensors, generated on `device` (fast on a GPU) and handed back on the CPU."""
    for name, tensor in random_tensors(shapes, dtype, device, seed):
        yield name, tensor.cpu()


def tokenizer_files(path: str | Path, hf_config: dict) -> dict[str, bytes]:
    """--tokenizer PATH: file name -> content for the engine. A tokenizer.json file is copied alone;
    a folder's tokenizer.json comes with the tokenizer_config.json, special_tokens_map.json,
    generation_config.json and chat template beside it, as a checkpoint folder's would."""
    from ingot.builder.checkpoint import tokenizer_files as checkpoint_tokenizer_files

    path = Path(path).expanduser()
    if path.is_dir():
        tokenizer_json, folder = path / "tokenizer.json", path
        if not tokenizer_json.is_file():
            raise ConfigError(f"--tokenizer {path}: the folder holds no tokenizer.json; {TOKENIZER_FIX}")
    elif path.is_file():
        tokenizer_json, folder = path, None
    else:
        raise ConfigError(f"--tokenizer {path} does not exist; {TOKENIZER_FIX}")
    try:
        return checkpoint_tokenizer_files(tokenizer_json, hf_config, folder)
    except CheckpointError as exc:
        raise ConfigError(f"--tokenizer {path}: {exc}") from exc


def check_tokenizer_fits(engine_dir: Path, vocab_size: int, source: str) -> None:
    """The copied tokenizer, as the runtime reads it (added and special tokens included), must not
    produce an id past the embedding table: such an id has no row to look up."""
    from ingot.tokenizer import Tokenizer

    try:
        size = Tokenizer.from_dir(engine_dir).vocab_size
    except CheckpointError as exc:
        raise ConfigError(f"--tokenizer {source}: the runtime cannot load it ({exc})") from exc
    if size > vocab_size:
        raise ConfigError(f"--tokenizer {source}: its vocabulary has {size} tokens (added tokens included), more "
                          f"than the config's vocab_size {vocab_size}; pass the model's own tokenizer, or a config "
                          f"whose vocab_size is at least {size}")
