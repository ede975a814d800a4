"""Prompts for the online benchmark: synthetic random-word text, or a JSONL file.

Synthetic prompts are random common English words, so every prompt is different (no prefix
cache hits between them) and any server's tokenizer can read them; `ingot bench serve` scales
the number of words to the requested input length with one probe request (see calibrate in
ingot/bench/serve.py), since the client does not know the server's tokenizer.

A JSONL file has one object per line: {"prompt": "...", "max_tokens": 128}; max_tokens is
optional (then --osl applies).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from ingot.errors import ConfigError

WORDS = (
    "time year people way day man thing woman life child world school state family student group country "
    "problem hand part place case week company system program question work government number night point "
    "home water room mother area money story fact month lot right study book eye job word business issue "
    "side kind head house service friend father power hour game line end member law car city community "
    "name president team minute idea kid body information back parent face others level office door health "
    "person art war history party result change morning reason research girl guy moment air teacher force "
    "education foot boy age policy music market sense nation plan college interest death experience effect "
    "class control care field development role effort rate heart drug show leader light voice wife police "
    "mind price report decision son view relationship town road arm difference value building action model "
    "season society tax director position player record paper space ground form event official matter center"
).split()


@dataclass(frozen=True)
class BenchRequest:
    prompt: str
    max_tokens: int


def random_text(num_words: int, rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(num_words))


def synthetic(num_prompts: int, num_words: int, max_tokens: int, seed: int = 0) -> list[BenchRequest]:
    rng = random.Random(seed)
    return [BenchRequest(random_text(num_words, rng), max_tokens) for _ in range(num_prompts)]


def load_jsonl(path: str | Path, num_prompts: int | None, default_max_tokens: int) -> list[BenchRequest]:
    """The file's first num_prompts prompts (all of them when None); a bad line is an error naming it."""
    requests = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            requests.append(_parse_line(line, path, lineno, default_max_tokens))
            if num_prompts is not None and len(requests) == num_prompts:
                break
    if not requests:
        raise ConfigError(f"{path}: no prompts (expected JSON lines like {{\"prompt\": \"...\", \"max_tokens\": 64}})")
    return requests


def _parse_line(line: str, path, lineno: int, default_max_tokens: int) -> BenchRequest:
    try:
        item = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{lineno}: not JSON ({exc})") from None
    if not isinstance(item, dict) or not isinstance(item.get("prompt"), str) or not item["prompt"]:
        raise ConfigError(f"{path}:{lineno}: expected an object with a non-empty string \"prompt\"")
    max_tokens = item.get("max_tokens", default_max_tokens)
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise ConfigError(f"{path}:{lineno}: max_tokens must be a positive integer, got {max_tokens!r}")
    return BenchRequest(item["prompt"], max_tokens)
