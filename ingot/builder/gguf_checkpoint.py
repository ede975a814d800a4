"""Reading a GGUF file (llama.cpp's format) as a Checkpoint with Hugging Face names.

A GGUF is one file: metadata (the model's shape and its whole tokenizer) then a table of
tensors, most of them quantized in blocks. We rebuild what a Hugging Face folder would hold:
- hf_config from the `{arch}.*` metadata keys;
- tokenizer.json from `tokenizer.ggml.*` (see the second half of this file);
- float32 tensors: gguf.quants.dequantize, renamed, and for llama un-permuted (below).

We parse the header ourselves instead of with gguf.GGUFReader: the reader builds a numpy view
for every vocabulary string and merge (~100k for SmolLM2) and takes ~5 s; this walk takes
~0.3 s. The block formats and their dequantization come from the gguf package.
"""

from __future__ import annotations

import json
import math
import mmap
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from ingot.builder.checkpoint import Checkpoint
from ingot.errors import CheckpointError

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                   10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}
_BLOCK_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


@dataclass(frozen=True)
class TensorInfo:
    name: str  # the GGUF name, e.g. "blk.0.attn_q.weight"
    shape: tuple[int, ...]  # torch order (GGUF stores ne[], fastest-moving dimension first)
    qtype: GGMLQuantizationType
    offset: int  # absolute byte offset in the file
    nbytes: int


def load_gguf(path: Path) -> Checkpoint:
    metadata, infos = read_gguf_header(path)
    hf_config = gguf_hf_config(metadata, infos, path)
    names = {info.name: hf_tensor_name(info.name, path) for info in infos}
    # GGUF projection -> head count, for the q/k rows llama.cpp's converter permuted (llama only).
    permute = {"attn_q": hf_config["num_attention_heads"], "attn_k": hf_config["num_key_value_heads"]} \
        if metadata["general.architecture"] == "llama" else {}
    return Checkpoint(
        source=str(path),
        hf_config=hf_config,
        tokenizer_files=build_tokenizer_files(metadata, hf_config, path),
        _tensor_iter=lambda: _iter_tensors(path, infos, names, permute),
    )


# -- the header ------------------------------------------------------------------------------------


class _Cursor:
    """Reads little-endian GGUF values from a buffer, advancing a position."""

    def __init__(self, buf: mmap.mmap) -> None:
        self.buf, self.pos = buf, 0

    def scalar(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        length = self.scalar("<Q")
        data = self.buf[self.pos:self.pos + length]
        if len(data) != length:
            raise struct.error("string runs past the end of the file")
        self.pos += length
        return data.decode("utf-8")

    def value(self, vtype: int) -> Any:
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, count = self.scalar("<I"), self.scalar("<Q")
            if etype in _SCALAR_FORMATS:  # numbers (token types, scores): one unpack for the lot
                fmt = _SCALAR_FORMATS[etype]
                values = struct.unpack_from(f"<{count}{fmt[1]}", self.buf, self.pos)
                self.pos += count * struct.calcsize(fmt)
                return list(values)
            return [self.value(etype) for _ in range(count)]
        if vtype not in _SCALAR_FORMATS:
            raise ValueError(f"unknown metadata value type {vtype}")
        return self.scalar(_SCALAR_FORMATS[vtype])


def read_gguf_header(path: Path) -> tuple[dict[str, Any], list[TensorInfo]]:
    """Metadata and tensor table; checks that every tensor's bytes lie inside the file."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            metadata, infos = _parse_header(_Cursor(buf), path)
            size = len(buf)
    except CheckpointError:
        raise
    except (struct.error, ValueError, UnicodeDecodeError, OSError, MemoryError, ArithmeticError) as exc:
        raise CheckpointError(
            f"{path}: truncated or corrupt GGUF file ({type(exc).__name__}: {exc}); download it again"
        ) from exc
    end = max((info.offset + info.nbytes for info in infos), default=0)
    if end > size:
        raise CheckpointError(f"{path}: truncated GGUF file: its tensors need {end} bytes, the file has {size}; "
                              f"download it again")
    return metadata, infos


def _parse_header(cur: _Cursor, path: Path) -> tuple[dict[str, Any], list[TensorInfo]]:
    if cur.buf[:4] != b"GGUF":
        raise CheckpointError(f"{path}: not a GGUF file (it does not start with the magic bytes 'GGUF')")
    version = cur.scalar("<4xI")
    if version not in (2, 3):
        raise CheckpointError(f"{path}: GGUF version {version}; ingot reads versions 2 and 3")
    tensor_count, kv_count = cur.scalar("<Q"), cur.scalar("<Q")
    metadata = {}
    for _ in range(kv_count):
        key = cur.string()
        metadata[key] = cur.value(cur.scalar("<I"))
    table = []
    for _ in range(tensor_count):
        name = cur.string()
        dims = [cur.scalar("<Q") for _ in range(cur.scalar("<I"))]
        table.append((name, tuple(reversed(dims)), GGMLQuantizationType(cur.scalar("<I")), cur.scalar("<Q")))
    alignment = metadata.get("general.alignment", 32)
    data_start = (cur.pos + alignment - 1) // alignment * alignment
    infos = []
    for name, shape, qtype, offset in table:
        block, block_bytes = GGML_QUANT_SIZES[qtype]
        infos.append(TensorInfo(name, shape, qtype, data_start + offset, math.prod(shape) // block * block_bytes))
    return metadata, infos


# -- config and names -----------------------------------------------------------------------------


def gguf_hf_config(md: dict[str, Any], infos: list[TensorInfo], path: Path) -> dict[str, Any]:
    arch = md.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"{path}: GGUF architecture {arch!r} is not supported; supported: "
                              f"{', '.join(ARCHITECTURES)}")

    def key(name: str) -> Any:
        if f"{arch}.{name}" not in md:
            raise CheckpointError(f"{path}: GGUF metadata lacks {arch}.{name}; the file is incomplete")
        return md[f"{arch}.{name}"]

    shapes = {info.name: info.shape for info in infos}
    if "rope_freqs.weight" in shapes:
        raise CheckpointError(f"{path}: this GGUF stores Llama 3.1-style rope scaling as a rope_freqs tensor, "
                              f"which ingot cannot map back to rope_scaling; use the Hugging Face checkpoint")
    hidden, heads = key("embedding_length"), key("attention.head_count")
    head_dim = md.get(f"{arch}.attention.key_length") or md.get(f"{arch}.rope.dimension_count") or hidden // heads
    has_bias = arch != "qwen2" and "blk.0.attn_q.bias" in shapes  # qwen2 always has q/k/v biases
    eos = list(dict.fromkeys(md[k] for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id")
                             if k in md))
    return {
        "architectures": [ARCHITECTURES[arch]],
        "model_type": arch,
        "vocab_size": shapes["token_embd.weight"][0] if "token_embd.weight" in shapes
        else len(md.get("tokenizer.ggml.tokens", ())),
        "hidden_size": hidden,
        "intermediate_size": key("feed_forward_length"),
        "num_hidden_layers": key("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": md.get(f"{arch}.attention.head_count_kv", heads),
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": key("attention.layer_norm_rms_epsilon"),
        "rope_theta": md.get(f"{arch}.rope.freq_base", 10000.0),
        "rope_scaling": _rope_scaling(md, arch),
        "max_position_embeddings": key("context_length"),
        "tie_word_embeddings": "output.weight" not in shapes,  # llama.cpp omits output when tied
        "attention_bias": has_bias,
        "mlp_bias": "blk.0.ffn_gate.bias" in shapes,
        "bos_token_id": md.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": eos[0] if len(eos) == 1 else (eos or None),
        "pad_token_id": md.get("tokenizer.ggml.padding_token_id"),
        "torch_dtype": "float32",  # tensors() dequantizes everything to float32
    }


def _rope_scaling(md: dict[str, Any], arch: str) -> dict[str, Any] | None:
    kind = md.get(f"{arch}.rope.scaling.type", "none")
    if kind == "none":
        return None
    scaling = {"rope_type": kind, "factor": md.get(f"{arch}.rope.scaling.factor", 1.0)}
    if f"{arch}.rope.scaling.original_context_length" in md:
        scaling["original_max_position_embeddings"] = md[f"{arch}.rope.scaling.original_context_length"]
    return scaling


def hf_tensor_name(gguf_name: str, path: Path) -> str:
    """'blk.3.attn_q.weight' -> 'model.layers.3.self_attn.q_proj.weight'."""
    stem, _, kind = gguf_name.rpartition(".")
    if stem in _TOP_NAMES and kind in ("weight", "bias"):
        return f"{_TOP_NAMES[stem]}.{kind}"
    match = _BLOCK_RE.fullmatch(gguf_name)
    if match and match[2] in _BLOCK_NAMES:
        return f"model.layers.{match[1]}.{_BLOCK_NAMES[match[2]]}.{match[3]}"
    raise CheckpointError(f"{path}: GGUF tensor {gguf_name!r} has no Hugging Face counterpart ingot knows; "
                          f"the file holds a model variant ingot does not support")


# -- tensors --------------------------------------------------------------------------------------


def unpermute_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's q/k permute (HF's half-split rotary -> GGML's interleaved pairs).

    llama.cpp wrote w.reshape(n_head, 2, head_dim // 2, *rest).swapaxes(1, 2): within each head,
    row j of the first half and row j of the second half became neighbours 2j and 2j + 1.
    """
    rest = w.shape[1:]
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *rest).transpose(1, 2).reshape(w.shape)


def read_tensor(data: np.ndarray, info: TensorInfo, path: Path) -> torch.Tensor:
    """Dequantize one tensor to float32, in torch shape."""
    raw = data[info.offset:info.offset + info.nbytes].reshape(*info.shape[:-1], -1)  # a row of blocks per row
    try:
        values = dequantize(raw, info.qtype)
    except NotImplementedError as exc:
        raise CheckpointError(f"{path}: tensor {info.name} is stored as {info.qtype.name}, which the installed "
                              f"gguf package cannot dequantize ({exc}); upgrade gguf") from exc
    if values.shape != info.shape:
        raise CheckpointError(f"{path}: tensor {info.name} dequantized to shape {values.shape}, the table "
                              f"says {info.shape}; the file is corrupt")
    # A copy: the memory map is read-only and outlives nothing we hand out.
    return torch.from_numpy(np.require(values, dtype=np.float32, requirements=["C", "W"]))


def _iter_tensors(path: Path, infos: list[TensorInfo], names: dict[str, str],
                  permute: dict[str, int]) -> Iterator[tuple[str, torch.Tensor]]:
    # A plain ndarray over the map: slices of an np.memmap pay for subclass bookkeeping, which the
    # row-by-row dequantizer multiplies into seconds.
    data = np.asarray(np.memmap(path, dtype=np.uint8, mode="r"))
    for info in infos:
        tensor = read_tensor(data, info, path)
        block = _BLOCK_RE.fullmatch(info.name)
        if block and block[2] in permute:
            tensor = unpermute_rows(tensor, permute[block[2]])
        yield names[info.name], tensor


# -- the tokenizer ---------------------------------------------------------------------------------
#
# A GGUF carries the vocabulary, merges, token types and special ids under tokenizer.ggml.*, and
# names its pre-tokenizer (tokenizer.ggml.pre) instead of spelling it out. We rebuild the
# tokenizer.json the original Hugging Face repo had; each split below is the one llama.cpp
# applies for that name.

_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED = 1, 2, 3, 4  # tokenizer.ggml.token_type values
_SPECIAL_IDS = {"bos": "bos", "eos": "eos", "unk": "unknown", "pad": "padding"}  # -> tokenizer.ggml.{}_token_id
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# tokenizer.ggml.pre -> (split regex or None for GPT-2's own, digits one by one, NFC, ignore_merges)
_BYTE_LEVEL_PRE = {
    "gpt-2": (None, False, False, False),
    "smollm": (None, True, False, False),
    "llama-bpe": (_LLAMA3_SPLIT, False, False, True),  # Llama 3: whole words in the vocab skip merges
    "llama3": (_LLAMA3_SPLIT, False, False, True),
    "qwen2": (_QWEN2_SPLIT, False, True, False),  # Qwen2/2.5/3 normalize to NFC first
    "deepseek-r1-qwen": (_QWEN2_SPLIT, False, True, False),
}


def build_tokenizer_files(md: dict[str, Any], hf_config: dict[str, Any], path: Path) -> dict[str, bytes]:
    """tokenizer.json, tokenizer_config.json and generation_config.json from the GGUF metadata."""
    kind = md.get("tokenizer.ggml.model")
    tokens = md.get("tokenizer.ggml.tokens")
    if not tokens:
        raise CheckpointError(f"{path}: GGUF has no tokenizer.ggml.tokens; ingot needs the tokenizer in the file")
    types = md.get("tokenizer.ggml.token_type") or [_NORMAL] * len(tokens)
    ids = {name: md.get(f"tokenizer.ggml.{key}_token_id") for name, key in _SPECIAL_IDS.items()}
    if kind == "gpt2":
        backend = _byte_level_bpe(md, tokens, types, path)
    elif kind == "llama":
        backend = _sentencepiece_bpe(md, tokens, ids["unk"])
    else:
        raise CheckpointError(f"{path}: GGUF tokenizer model {kind!r} is not supported; supported: gpt2 "
                              f"(byte-level BPE), llama (SentencePiece BPE)")
    _add_special_tokens(backend, tokens, types)
    # Older SentencePiece files have no flag; llama.cpp then adds BOS.
    add_bos = md.get("tokenizer.ggml.add_bos_token", kind == "llama")
    add_eos = md.get("tokenizer.ggml.add_eos_token", False)
    config = {f"{name}_token": tokens[i] for name, i in ids.items() if i is not None and i < len(tokens)}
    backend.post_processor = _post_processor(config.get("bos_token") if add_bos else None,
                                             config.get("eos_token") if add_eos else None, ids, kind == "gpt2")
    config |= {"add_bos_token": bool(add_bos), "add_eos_token": bool(add_eos),
               "model_max_length": hf_config["max_position_embeddings"],
               "clean_up_tokenization_spaces": False, "tokenizer_class": "PreTrainedTokenizerFast"}
    if "tokenizer.chat_template" in md:
        config["chat_template"] = md["tokenizer.chat_template"]
    generation = {k: hf_config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
                  if hf_config.get(k) is not None}
    return {
        "tokenizer.json": backend.to_str().encode("utf-8"),
        "tokenizer_config.json": json.dumps(config, indent=2, ensure_ascii=False).encode("utf-8"),
        "generation_config.json": json.dumps(generation, indent=2).encode("utf-8"),
    }


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable spelling of each byte, the alphabet byte-level vocabularies are written in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1),
                 *range(ord("\xae"), ord("\xff") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


def _byte_level_bpe(md: dict[str, Any], tokens: list[str], types: list[int], path: Path) -> Tokenizer:
    pre = md.get("tokenizer.ggml.pre", "default")
    if pre not in _BYTE_LEVEL_PRE:
        raise CheckpointError(f"{path}: GGUF pre-tokenizer {pre!r} is not supported; supported: "
                              f"{', '.join(_BYTE_LEVEL_PRE)}")
    split, digits, nfc, ignore_merges = _BYTE_LEVEL_PRE[pre]
    spelling = _bytes_to_unicode()
    alphabet = set(spelling.values())
    vocab: dict[str, int] = {}
    for i, (token, kind) in enumerate(zip(tokens, types)):
        if kind == _NORMAL and not set(token) <= alphabet:  # a few converters wrote raw text; respell it
            token = "".join(spelling[b] for b in token.encode("utf-8"))
        vocab.setdefault(token, i)
    merges = [tuple(m.split(" ", 1)) for m in md.get("tokenizer.ggml.merges", ())]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges))
    if nfc:
        tok.normalizer = normalizers.NFC()
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=split is None)
    first = [pre_tokenizers.Split(Regex(split), behavior="isolated")] if split else []
    first += [pre_tokenizers.Digits(individual_digits=True)] if digits else []
    tok.pre_tokenizer = pre_tokenizers.Sequence([*first, byte_level]) if first else byte_level
    tok.decoder = decoders.ByteLevel()
    return tok


def _sentencepiece_bpe(md: dict[str, Any], tokens: list[str], unk_id: int | None) -> Tokenizer:
    """A SentencePiece BPE vocabulary (Llama 1/2, Mistral), as transformers' LlamaTokenizer builds it."""
    vocab: dict[str, int] = {}
    for i, token in enumerate(tokens):
        vocab.setdefault(token, i)
    if "tokenizer.ggml.merges" in md:
        merges = [tuple(m.split(" ", 1)) for m in md["tokenizer.ggml.merges"]]
    else:
        scores = md.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
        merges = _merges_from_scores(vocab, dict(zip(tokens, scores)))
    unk = tokens[unk_id] if unk_id is not None else None
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    prefix = md.get("tokenizer.ggml.add_space_prefix", True)
    scheme = "first" if prefix else "never"
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme=scheme, split=False)
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    tok.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if prefix else []))
    return tok


def _merges_from_scores(vocab: dict[str, int], scores: dict[str, float]) -> list[tuple[str, str]]:
    """SentencePiece stores no merges: every split of a piece into two pieces is a merge, ranked by
    the whole piece's score (higher merges first), as transformers' SentencePiece converter does."""
    merges = []
    for piece, score in scores.items():
        local = [(piece[:i], piece[i:], score) for i in range(1, len(piece))
                 if piece[:i] in vocab and piece[i:] in vocab]
        merges += sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]]))
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in merges]


def _add_special_tokens(tok: Tokenizer, tokens: list[str], types: list[int]) -> None:
    """Control tokens (<|im_start|>) match whole and are skipped when decoding; user-defined ones
    (<think>) match whole but decode as text. Both keep their ids: they are in the vocabulary."""
    vocab = tok.get_vocab()
    special = [AddedToken(t, special=True, normalized=False) for i, (t, k) in enumerate(zip(tokens, types))
               if k in (_CONTROL, _UNKNOWN) and vocab.get(t) == i]
    plain = [AddedToken(t, special=False, normalized=False) for i, (t, k) in enumerate(zip(tokens, types))
             if k == _USER_DEFINED and vocab.get(t) == i]
    tok.add_special_tokens(special)
    tok.add_tokens(plain)


def _post_processor(bos: str | None, eos: str | None, ids: dict[str, int | None],
                    byte_level: bool) -> processors.PostProcessor | None:
    """Add BOS / EOS in tokenizer.json itself when the file asks, as Llama 3's tokenizer.json does."""
    if bos is None and eos is None:
        return processors.ByteLevel(trim_offsets=False) if byte_level else None
    single = " ".join(t for t in (bos, "$A", eos) if t)
    pair = " ".join(t for t in (bos and f"{bos}:1", "$B:1", eos and f"{eos}:1") if t)
    specials = dict.fromkeys((t, ids[k]) for t, k in ((bos, "bos"), (eos, "eos")) if t)
    return processors.TemplateProcessing(single=single, pair=f"{single} {pair}", special_tokens=list(specials))
