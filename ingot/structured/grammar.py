"""Grammars compiled against the engine's tokenizer, and the per-request matcher.

    StructuredOutput ──compile (once per (kind, spec), cached)──▶ CompiledGrammar
    CompiledGrammar ──per request──▶ Matcher: fill(bitmask row) before each sampled token,
                                              accept(token) after it

The bitmask is xgrammar's packed layout: int32 words of shape (rows, ceil(vocab / 32)), bit
j of word i set when token 32 i + j is allowed. Rows are filled on the host, one by one on the
calling thread: measured on 2 cores (bench/results/*-cpu-grammar-engines.json) that beat
xgrammar's own thread pool at batch 64.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch

from ingot.errors import RequestError
from ingot.structured.spec import JSON_FORMAT, StructuredOutput, _first_line

MAX_CACHED_GRAMMARS = 256


def bitmask_words(vocab_size: int) -> int:
    return (vocab_size + 31) // 32


class GrammarCompiler:
    """Compiles StructuredOutputs for one tokenizer; keeps the last MAX_CACHED_GRAMMARS compiled.
    The tokenizer's vocabulary is read (about a second) on the first compile, not at engine start.
    Thread-safe: requests are made on the API's threads or the engine's."""

    def __init__(self, tokenizer, vocab_size: int, stop_token_ids: tuple[int, ...]) -> None:
        self.tokenizer, self.vocab_size, self.stop_token_ids = tokenizer, vocab_size, list(stop_token_ids)
        self._compiler = None
        self._cache: OrderedDict[tuple[str, str], object] = OrderedDict()
        self._lock = threading.Lock()

    def matcher(self, structured: StructuredOutput) -> Matcher:
        return Matcher(self.compile(structured))

    def compile(self, structured: StructuredOutput):
        with self._lock:
            compiled = self._cache.get(structured.key)
            if compiled is not None:
                self._cache.move_to_end(structured.key)
                return compiled
            try:
                compiled = self._compile(structured)
            except Exception as exc:
                raise RequestError(f"{structured.field}: cannot be compiled for this model's tokenizer: "
                                   f"{_first_line(exc)}") from None
            self._cache[structured.key] = compiled
            if len(self._cache) > MAX_CACHED_GRAMMARS:
                self._cache.popitem(last=False)
            return compiled

    def _compile(self, structured: StructuredOutput):
        compiler = self._get_compiler()
        if structured.kind == "json_schema":
            return compiler.compile_json_schema(structured.spec, **JSON_FORMAT)
        if structured.kind == "regex":
            return compiler.compile_regex(structured.spec)
        return compiler.compile_grammar(structured.grammar())

    def _get_compiler(self):
        if self._compiler is None:
            import xgrammar as xgr

            self._compiler = xgr.GrammarCompiler(tokenizer_info(self.tokenizer, self.vocab_size, self.stop_token_ids),
                                                 max_threads=1, cache_enabled=False)
        return self._compiler


def tokenizer_info(tokenizer, vocab_size: int, stop_token_ids: list[int]):
    """xgrammar's view of an ingot Tokenizer (the tokenizers library's, without transformers), as
    xgrammar.TokenizerInfo.from_huggingface builds it for a fast tokenizer: the raw vocabulary in
    id order, padded to the model's vocab_size (ids past the tokenizer's are never allowed), the
    encoding (byte-level, byte-fallback, raw) read from the tokenizer's JSON. Unlike there, special
    tokens other than the stop tokens are never allowed."""
    import xgrammar as xgr

    backend = tokenizer._tok
    special = tokenizer.all_special_ids - set(stop_token_ids)
    encoded = [""] * vocab_size
    for token, i in backend.get_vocab(with_added_tokens=True).items():
        # A special token read as text ("<|im_start|>") would be allowed inside any JSON string;
        # xgrammar never allows a token whose text is empty.
        if i < vocab_size and i not in special:
            encoded[i] = token
    meta = xgr.TokenizerInfo._detect_metadata_from_hf(backend.to_str())
    return xgr.TokenizerInfo(encoded, meta["vocab_type"], vocab_size=vocab_size, stop_token_ids=stop_token_ids,
                             add_prefix_space=meta["add_prefix_space"])


class Matcher:
    """One request's position in its grammar. fill() writes the tokens allowed next; accept()
    advances by the token sampled. After the grammar's end only the stop tokens (EOS) are allowed."""

    def __init__(self, compiled) -> None:
        import xgrammar as xgr

        self._matcher = xgr.GrammarMatcher(compiled)

    def fill(self, bitmask: torch.Tensor, row: int) -> None:
        # bitmask: (rows, words) int32, CPU
        self._matcher.fill_next_token_bitmask(bitmask, row)

    def accept(self, token: int) -> bool:
        """False (the state unchanged) if the grammar does not allow `token`."""
        return self._matcher.accept_token(token)

    @property
    def is_terminated(self) -> bool:
        return self._matcher.is_terminated()


def apply_token_bitmask(logits: torch.Tensor, rows: list[int], bitmask: torch.Tensor) -> torch.Tensor:
    """logits with every token a row's mask disallows set to -inf, for the listed rows only;
    the other rows are untouched (bit for bit), and `logits` itself is not modified.
    logits: (num_rows, vocab) float, any device; bitmask: (len(rows), ceil(vocab / 32)) int32."""
    num_rows, vocab = logits.shape
    assert bitmask.dtype == torch.int32 and bitmask.shape == (len(rows), bitmask_words(vocab)), \
        (bitmask.dtype, tuple(bitmask.shape), len(rows), vocab)
    bits = torch.arange(32, dtype=torch.int32, device=logits.device)
    words = bitmask.to(logits.device, non_blocking=True)
    allowed = ((words.unsqueeze(-1) >> bits) & 1).bool().flatten(1)[:, :vocab]  # (len(rows), vocab)
    index = torch.tensor(rows, dtype=torch.long, device=logits.device)
    masked = logits.index_select(0, index).masked_fill(~allowed, float("-inf"))
    return logits.index_copy(0, index, masked)
