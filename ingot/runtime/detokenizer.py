"""Incremental detokenization (stop strings: stop_strings.py).

Decoding one token at a time is wrong in two ways: a byte-level BPE token can hold part of a
UTF-8 character (it decodes to U+FFFD until the rest arrives), and SentencePiece decoders
drop the leading space of the first token of whatever they are given, so "▁world" alone
decodes to "world". Re-decoding the whole output each step is right but O(n) per token.

We keep a short window instead (as vLLM's prefix/read offsets): `ids[prefix:read]` is text
already emitted, decoded as context; each step decodes `ids[prefix:]` and emits what it adds
beyond `decode(ids[prefix:read])`. While that tail ends in U+FFFD a character is still split,
so we emit nothing and wait. Once text is emitted both offsets move forward, so the window
stays a few tokens long.

Invariant: the concatenated deltas (after `flush()`) equal
`decode(context + output)[len(decode(context)):]`, where `context` is the last few prompt ids.
For byte-level BPE that is exactly `tokenizer.decode(output_ids)`. For SentencePiece it differs
only in keeping the first output token's leading space, because the text continues the prompt.
One case is not followed: a SentencePiece ByteFallback decoder turns a run of byte tokens that is
not valid UTF-8 into one U+FFFD per token, retroactively ("<0x00>" is "\x00" until a stray
"<0x80>" follows); the stream keeps what was valid when it was emitted, as sentencepiece would.
"""

from __future__ import annotations

# How many prompt tokens are decoded as context for the first output token (vLLM uses 5 too);
# enough for a SentencePiece space and for any UTF-8 character to be whole.
PROMPT_CONTEXT_TOKENS = 5
REPLACEMENT_CHAR = "\ufffd"


def incremental_detokenizer(tokenizer, prompt_ids: list[int], skip_special_tokens: bool = True):
    """The fastest detokenizer the tokenizer allows: the tokenizers library's own DecodeStream (the
    same windowed algorithm, one call into Rust per token: a decode step of 1,024 requests spends
    its host time here), else the window kept in Python."""
    context = list(prompt_ids[-PROMPT_CONTEXT_TOKENS:])
    stream = getattr(tokenizer, "decode_stream", None)
    stream = stream(context, skip_special_tokens) if stream is not None else None
    # A context that decodes to U+FFFD (the prompt ends inside a character, or in invalid bytes):
    # DecodeStream would emit that context as text; the window treats it as context, as it must.
    if stream is not None and REPLACEMENT_CHAR not in tokenizer.decode(context, skip_special_tokens):
        return StreamDetokenizer(tokenizer, stream, context, skip_special_tokens)
    return WindowDetokenizer(tokenizer, prompt_ids, skip_special_tokens)


class StreamDetokenizer:
    """The incremental detokenizer on a tokenizers DecodeStream: step() holds back a split character
    (returns None) exactly as the window below does."""

    def __init__(self, tokenizer, stream, context_ids: list[int], skip_special_tokens: bool) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._stream = stream
        self._context = context_ids
        self._held = 0  # tokens added since the stream last emitted text
        self.output_ids: list[int] = []
        self.text = ""

    def add(self, token_ids: list[int]) -> str:
        delta = ""
        for token_id in token_ids:
            self.output_ids.append(token_id)
            piece = self.tokenizer.step_stream(self._stream, token_id)
            if piece is None:
                self._held += 1
            else:
                self._held, delta = 0, delta + piece
        self.text += delta
        return delta

    def flush(self) -> str:
        """The held-back tail (an unfinished UTF-8 character as U+FFFD): decode the whole output once,
        in context, and emit what it adds to the text already emitted."""
        if not self._held:
            return ""
        self._held = 0
        context_text = self.tokenizer.decode(self._context, skip_special_tokens=self.skip_special_tokens)
        full = self.tokenizer.decode(self._context + self.output_ids, skip_special_tokens=self.skip_special_tokens)
        delta = full[len(context_text):][len(self.text):]
        self.text += delta
        return delta


class WindowDetokenizer:
    def __init__(self, tokenizer, prompt_ids: list[int], skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._ids: list[int] = list(prompt_ids[-PROMPT_CONTEXT_TOKENS:])
        self._prefix = 0  # ids[prefix:read] decode to context whose text was already emitted
        self._read = len(self._ids)  # ids[read:] are not yet emitted
        self._prefix_text = self._decode(self._prefix, self._read)
        self.output_ids: list[int] = []
        self.text = ""

    def add(self, token_ids: list[int]) -> str:
        """Append new output tokens; return the text they complete (possibly "")."""
        delta = []
        for token_id in token_ids:  # one at a time, so a split character holds back only its own tokens
            self._ids.append(token_id)
            self.output_ids.append(token_id)
            delta.append(self._step(final=False))
        return self._emit("".join(delta))

    def flush(self) -> str:
        """Emit text held back at the end of a request (e.g. an unfinished UTF-8 character as U+FFFD)."""
        return self._emit(self._step(final=True)) if self._read < len(self._ids) else ""

    def _step(self, final: bool) -> str:
        new_text = self._decode(self._prefix, len(self._ids))
        if not final and (len(new_text) <= len(self._prefix_text) or new_text.endswith(REPLACEMENT_CHAR)):
            return ""  # nothing new yet, or a character is still split across tokens
        delta = new_text[len(self._prefix_text):]
        self._prefix, self._read = self._read, len(self._ids)
        self._prefix_text = self._decode(self._prefix, self._read)
        return delta

    def _decode(self, start: int, end: int) -> str:
        return self.tokenizer.decode(self._ids[start:end], skip_special_tokens=self.skip_special_tokens)

    def _emit(self, delta: str) -> str:
        self.text += delta
        return delta
