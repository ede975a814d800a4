"""Response bodies and stream chunks of the two endpoints, in OpenAI's shapes.

    /v1/completions       text_completion / text_completion chunks; logprobs as
                          {tokens, token_logprobs, top_logprobs, text_offset}; with echo, the
                          prompt's tokens come first (the first with a null logprob)
    /v1/chat/completions  chat.completion / chat.completion.chunk; logprobs as
                          {content: [{token, logprob, bytes, top_logprobs: [...]}]}
"""

from __future__ import annotations

import re
import time
import uuid
from functools import lru_cache

from ingot.runtime.outputs import CompletionOutput

# JSON has no -inf; OpenAI-compatible servers report "impossible" as a very negative number.
MIN_LOGPROB = -9999.0


def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: vocab character -> the byte it stands for."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


_BYTE_LEVEL = _byte_level_decoder()
_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece's byte tokens


def raw_token_bytes(raw: str) -> bytes | None:
    """The bytes a vocabulary entry stands for, when it is a byte-level or byte-fallback token."""
    if match := _BYTE_FALLBACK.fullmatch(raw):
        return bytes([int(match.group(1), 16)])
    if raw and all(c in _BYTE_LEVEL for c in raw):
        return bytes(_BYTE_LEVEL[c] for c in raw)
    return None


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _top(entry: dict[int, float], k: int) -> list[tuple[int, float]]:
    """The k most likely tokens of one position (the engine puts the chosen one first, then the top k)."""
    return sorted(entry.items(), key=lambda item: -item[1])[:k]


def _lp(value: float) -> float:
    return max(value, MIN_LOGPROB)


class _Format:
    object_name: str
    chunk_object_name: str

    def __init__(self, tokenizer, model: str, num_logprobs: int | None, id_prefix: str) -> None:
        self.tokenizer, self.model, self.num_logprobs = tokenizer, model, num_logprobs
        self.id = new_id(id_prefix)
        self.created = int(time.time())

    def token_text(self, token_id: int) -> str:
        return self.token(token_id)[0]

    def token(self, token_id: int) -> tuple[str, bytes]:
        return _token(self.tokenizer, token_id)

    def response(self, choices: list[dict], usage_: dict) -> dict:
        return {"id": self.id, "object": self.object_name, "created": self.created, "model": self.model,
                "choices": choices, "usage": usage_, "system_fingerprint": None}

    def chunk(self, choices: list[dict], usage_: dict | None = None, with_usage_field: bool = False) -> dict:
        body = {"id": self.id, "object": self.chunk_object_name, "created": self.created, "model": self.model,
                "choices": choices, "system_fingerprint": None}
        if with_usage_field:  # stream_options.include_usage: null on every chunk but the last
            body["usage"] = usage_
        return body


class CompletionFormat(_Format):
    object_name = chunk_object_name = "text_completion"

    def __init__(self, tokenizer, model: str, num_logprobs: int | None, echo: bool) -> None:
        super().__init__(tokenizer, model, num_logprobs, "cmpl")
        self.echo = echo

    @property
    def scores_prompt(self) -> bool:
        """echo with logprobs: the prompt's tokens are listed with their log-probabilities first."""
        return self.echo and self.num_logprobs is not None

    def choice(self, index: int, out: CompletionOutput, job) -> dict:
        prefix = (job.prompt_text or "") if self.echo else ""
        logprobs = self.logprobs(out.token_ids, out.logprobs, len(prefix))
        if self.scores_prompt:
            logprobs = _concat(self.prompt_logprobs(job), logprobs)
        return {"index": index, "text": prefix + out.text, "logprobs": logprobs,
                "finish_reason": out.finish_reason, "stop_reason": out.stop_reason}

    def opening(self, index: int, job) -> dict | None:
        """Echo streams the prompt first, as its own chunk (with its scores when logprobs are asked:
        then it waits for the engine's first output, which carries them)."""
        if not self.echo:
            return None
        logprobs = self.prompt_logprobs(job) if self.scores_prompt else None
        return {"index": index, "text": job.prompt_text or "", "logprobs": logprobs, "finish_reason": None}

    def prompt_logprobs(self, job) -> dict:
        """The prompt's tokens in the legacy completions shape: the first has no logprob (null)."""
        scores = job.prompt_logprobs or [None] * len(job.prompt_ids)
        tokens = [self.token_text(t) for t in job.prompt_ids]
        return {"tokens": tokens,
                "token_logprobs": [None if e is None else _lp(e[t]) for t, e in zip(job.prompt_ids, scores)],
                "top_logprobs": [None if e is None else {self.token_text(a): _lp(v) for a, v in
                                                         _top(e, self.num_logprobs)} for e in scores],
                "text_offset": _offsets(tokens, 0)}

    def delta(self, index: int, text: str, token_ids: list[int], logprobs, offset: int,
              finish_reason: str | None, stop_reason) -> dict:
        return {"index": index, "text": text, "logprobs": self.logprobs(token_ids, logprobs, offset),
                "finish_reason": finish_reason, "stop_reason": stop_reason}

    def logprobs(self, token_ids: list[int], logprobs: list[dict] | None, offset: int) -> dict | None:
        if self.num_logprobs is None or logprobs is None:
            return None
        tokens = [self.token_text(t) for t in token_ids]
        return {"tokens": tokens, "token_logprobs": [_lp(e[t]) for t, e in zip(token_ids, logprobs)],
                "top_logprobs": [{self.token_text(a): _lp(v) for a, v in _top(e, self.num_logprobs)}
                                 for e in logprobs],
                "text_offset": _offsets(tokens, offset)}


def _offsets(tokens: list[str], start: int) -> list[int]:
    """Character offset of each token in the choice's text."""
    offsets = []
    for token in tokens:
        offsets.append(start)
        start += len(token)
    return offsets


def _concat(first: dict, second: dict | None) -> dict:
    """Two legacy logprobs objects, one after the other (the prompt's, then the generated tokens')."""
    if second is None:
        return first
    return {key: first[key] + second[key] for key in first}


class ChatFormat(_Format):
    object_name = "chat.completion"
    chunk_object_name = "chat.completion.chunk"

    def __init__(self, tokenizer, model: str, num_logprobs: int | None) -> None:
        super().__init__(tokenizer, model, num_logprobs, "chatcmpl")

    scores_prompt = False

    def choice(self, index: int, out: CompletionOutput, job) -> dict:
        return {"index": index, "message": {"role": "assistant", "content": out.text},
                "logprobs": self.logprobs(out.token_ids, out.logprobs, 0),
                "finish_reason": out.finish_reason, "stop_reason": out.stop_reason}

    def opening(self, index: int, job) -> dict:
        """Every chat stream starts by naming the role, as OpenAI's does."""
        return {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                "finish_reason": None}

    def delta(self, index: int, text: str, token_ids: list[int], logprobs, offset: int,
              finish_reason: str | None, stop_reason) -> dict:
        return {"index": index, "delta": {"content": text} if text else {},
                "logprobs": self.logprobs(token_ids, logprobs, offset),
                "finish_reason": finish_reason, "stop_reason": stop_reason}

    def logprobs(self, token_ids: list[int], logprobs: list[dict] | None, offset: int) -> dict | None:
        if self.num_logprobs is None or logprobs is None:
            return None
        return {"content": [{**self._entry(t, e[t]), "top_logprobs": [self._entry(a, v) for a, v in
                                                                      _top(e, self.num_logprobs)]}
                            for t, e in zip(token_ids, logprobs)]}

    def _entry(self, token_id: int, logprob: float) -> dict:
        text, raw = self.token(token_id)
        return {"token": text, "logprob": _lp(logprob), "bytes": list(raw)}


@lru_cache(maxsize=1 << 16)
def _token(tokenizer, token_id: int) -> tuple[str, bytes]:
    """(text, bytes) of one token. A token that is part of a UTF-8 character decodes to U+FFFD
    alone, so several would collide as logprob keys; it is written as OpenAI does, `bytes:\\xe2`."""
    text = tokenizer.decode([token_id], skip_special_tokens=False)
    if "\ufffd" not in text:
        return text, text.encode("utf-8")
    raw = tokenizer.id_to_token(token_id) or text
    data = raw_token_bytes(raw)
    if data is None:
        return raw, raw.encode("utf-8")
    return "bytes:" + "".join(f"\\x{b:02x}" for b in data), data
