"""Reading a checkpoint: the builder's input side.

Three sources give the same record, a `Checkpoint`:

- a Hugging Face folder: config.json, model.safetensors or sharded model-0000x-of-0000y.safetensors
  with model.safetensors.index.json, and tokenizer files;
- a .gguf file (see gguf_checkpoint.py): dequantized to float32, renamed to Hugging Face names;
- a preset name (see presets.py) that resolves to a checkpoint shipped in a Python package.

Everything that can be checked cheaply (files present, JSON valid, safetensors headers
readable) is checked in load_checkpoint, so a bad checkpoint fails before the builder starts
writing. Tensors are read lazily, one at a time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tokenizers
import torch
from safetensors import safe_open

from ingot.builder.presets import list_presets, resolve_preset
from ingot.errors import CheckpointError

INDEX_FILE = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# Copied into the engine as they are (tokenizer_config.json is rewritten, see _tokenizer_config).
OPTIONAL_TOKENIZER_FILES = ("special_tokens_map.json", "generation_config.json")


@dataclass
class Checkpoint:
    source: str  # the path (or preset name) it came from
    hf_config: dict[str, Any]  # a transformers-style config.json dict
    tokenizer_files: dict[str, bytes] = field(repr=False)  # file name -> content, copied into the engine
    _tensor_iter: Callable[[], Iterator[tuple[str, torch.Tensor]]] = field(repr=False, default=lambda: iter(()))

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(Hugging Face name, tensor) for every weight, read one at a time, in the checkpoint's dtype."""
        return self._tensor_iter()


def load_checkpoint(path_or_name: str | Path) -> Checkpoint:
    """A Hugging Face folder, a .gguf file, or a preset name (see list_presets())."""
    path = Path(path_or_name).expanduser()
    if path.is_dir():
        return load_hf_folder(path)
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            from ingot.builder.gguf_checkpoint import load_gguf  # imports gguf only when needed

            return load_gguf(path)
        raise CheckpointError(
            f"{path}: a checkpoint is a Hugging Face folder (config.json + *.safetensors + tokenizer.json) "
            f"or a .gguf file; pass the folder that holds this file instead"
        )
    preset_file = resolve_preset(str(path_or_name))
    if preset_file is not None:
        from ingot.builder.gguf_checkpoint import load_gguf

        checkpoint = load_gguf(preset_file)
        checkpoint.source = str(path_or_name)
        return checkpoint
    presets = ", ".join(list_presets())
    raise CheckpointError(
        f"{path_or_name}: no such file or folder, and not a preset name (presets: {presets}); "
        f"pass a Hugging Face checkpoint folder, a .gguf file, or one of the presets"
    )


def load_hf_folder(folder: Path) -> Checkpoint:
    hf_config = _read_config(folder)
    weight_files = _weight_files(folder)
    for file in weight_files:
        _check_safetensors(file)
    return Checkpoint(
        source=str(folder),
        hf_config=hf_config,
        tokenizer_files=_tokenizer_files(folder, hf_config),
        _tensor_iter=lambda: _iter_safetensors(weight_files),
    )


def read_json(path: Path, what: str) -> Any:
    """Parsed JSON, or a CheckpointError naming the file and the line of the mistake."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: {what} is not valid JSON ({exc}); re-save or re-download it") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read {what}: {exc}") from exc


def _read_config(folder: Path) -> dict[str, Any]:
    config_path = folder / "config.json"
    if not config_path.is_file():
        ggufs = sorted(p.name for p in folder.glob("*.gguf"))
        hint = f"; to load a GGUF, pass the file itself ({folder / ggufs[0]})" if ggufs else ""
        raise CheckpointError(
            f"{folder}: no config.json; a Hugging Face checkpoint folder needs config.json, *.safetensors "
            f"and tokenizer.json (save one with transformers' model.save_pretrained(dir)){hint}"
        )
    config = read_json(config_path, "config.json")
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path}: config.json must hold a JSON object, got {type(config).__name__}")
    # transformers 5 writes "dtype", 4.x "torch_dtype"; readers of hf_config may look for either.
    dtype = config.get("dtype") or config.get("torch_dtype")
    if dtype is not None:
        config.setdefault("torch_dtype", dtype)
    return config


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors files to read, in the order the index (or the shard numbering) gives."""
    index_path = folder / INDEX_FILE
    if index_path.is_file():
        index = read_json(index_path, INDEX_FILE)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index_path}: no 'weight_map' object naming the shard of each tensor")
        files = [folder / name for name in dict.fromkeys(weight_map.values())]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(
                f"{folder}: {INDEX_FILE} names shard(s) {', '.join(missing)} that are missing; "
                f"the download is incomplete: fetch the missing files again"
            )
        return files
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"{folder}: holds only pickled PyTorch weights ({', '.join(pickles[:3])}), which ingot does not "
            f"load (unpickling runs arbitrary code); convert them to safetensors once with transformers: "
            f"AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)"
        )
    raise CheckpointError(f"{folder}: no *.safetensors weight files; a checkpoint folder needs model.safetensors "
                          f"or sharded model-0000x-of-0000y.safetensors with {INDEX_FILE}")


def _check_safetensors(file: Path) -> None:
    """Open the header now, so a truncated or corrupt file fails before the build starts."""
    try:
        with safe_open(str(file), framework="pt") as f:
            f.keys()
    except Exception as exc:  # safetensors raises SafetensorError, OSError or others; all mean "unreadable"
        raise CheckpointError(
            f"{file}: not a readable safetensors file ({type(exc).__name__}: {exc}); it is truncated or "
            f"corrupt: download or save it again"
        ) from exc


def _iter_safetensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(f"{file}: reading tensors failed ({exc}); the file is corrupt") from exc


# -- tokenizer files ---------------------------------------------------------------------------


def _tokenizer_files(folder: Path, hf_config: dict[str, Any]) -> dict[str, bytes]:
    tokenizer_path = folder / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise CheckpointError(
            f"{folder}: no tokenizer.json; ingot needs a fast (tokenizers-library) tokenizer: save one with "
            f"transformers' AutoTokenizer.from_pretrained(dir).save_pretrained(dir)"
        )
    return tokenizer_files(tokenizer_path, hf_config, folder)


def tokenizer_files(tokenizer_path: Path, hf_config: dict[str, Any], folder: Path | None) -> dict[str, bytes]:
    """The engine's tokenizer files: tokenizer.json, the optional files and chat template found in
    `folder` (None: the tokenizer.json alone), and tokenizer_config.json with bos/eos filled from
    the model's config where the tokenizer's own files do not name them."""
    raw = tokenizer_path.read_bytes()
    try:
        backend = tokenizers.Tokenizer.from_str(raw.decode("utf-8"))
    except Exception as exc:
        raise CheckpointError(f"{tokenizer_path}: not a valid tokenizer.json ({exc})") from exc
    files = {"tokenizer.json": raw}
    for name in OPTIONAL_TOKENIZER_FILES:
        if folder is not None and (folder / name).is_file():
            read_json(folder / name, name)  # fail here on a broken file, not later in the engine
            files[name] = (folder / name).read_bytes()
    generation = json.loads(files["generation_config.json"]) if "generation_config.json" in files else {}
    config = _tokenizer_config(folder, backend, hf_config, generation)
    files["tokenizer_config.json"] = json.dumps(config, indent=2, ensure_ascii=False).encode("utf-8")
    return files


def _tokenizer_config(folder: Path | None, backend: tokenizers.Tokenizer, hf_config: dict[str, Any],
                      generation: dict[str, Any]) -> dict[str, Any]:
    """tokenizer_config.json with the chat template folded in and bos/eos/add_bos_token filled."""
    path = folder / "tokenizer_config.json" if folder is not None else None
    config = read_json(path, "tokenizer_config.json") if path is not None and path.is_file() else {}
    template = _chat_template(folder) if folder is not None else None
    if template is not None:
        config["chat_template"] = template
    for key in ("bos_token", "eos_token"):
        token = _token_string(config.get(key))
        if token is None:
            token_id = _first_id(hf_config.get(f"{key}_id"), generation.get(f"{key}_id"))
            token = backend.id_to_token(token_id) if token_id is not None else None
        if token is not None:
            config[key] = token
    if "add_bos_token" not in config:
        # transformers 5 leaves the flag out; what the post-processor does is the truth.
        bos_id = backend.token_to_id(config["bos_token"]) if config.get("bos_token") else None
        probe = backend.encode("a", add_special_tokens=True).ids
        config["add_bos_token"] = bos_id is not None and bool(probe) and probe[0] == bos_id
    return config


def _chat_template(folder: Path) -> str | list[dict[str, str]] | None:
    """transformers 5 saves the template beside tokenizer_config.json; engines read it from inside."""
    jinja = folder / "chat_template.jinja"
    extra = sorted((folder / "additional_chat_templates").glob("*.jinja"))
    if jinja.is_file():
        default = jinja.read_text(encoding="utf-8")
        if not extra:
            return default
        named = [{"name": "default", "template": default}]
        return named + [{"name": p.stem, "template": p.read_text(encoding="utf-8")} for p in extra]
    json_path = folder / "chat_template.json"
    if json_path.is_file():
        data = read_json(json_path, "chat_template.json")
        return data.get("chat_template") if isinstance(data, dict) else None
    return None


def _token_string(value: Any) -> str | None:
    """A special token is stored as a string or as a serialized AddedToken {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _first_id(*values: Any) -> int | None:
    for value in values:
        if isinstance(value, list) and value:
            value = value[0]
        if isinstance(value, int):
            return value
    return None
