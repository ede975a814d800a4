"""Tokenizer: a Hugging Face tokenizer directory, read without transformers.

The `tokenizers` library does the work (tokenizer.json); tokenizer_config.json and
generation_config.json supply the special tokens and the chat template. Behaviour follows
transformers' fast tokenizers, with one deliberate difference: when tokenizer_config asks for
`add_bos_token` but tokenizer.json's post-processor does not add BOS, we add it (as
transformers 4's Llama/Gemma tokenizers did; transformers 5 ignores the flag). A BOS the
post-processor already adds is never added twice.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import jinja2
import jinja2.ext
import jinja2.nodes
import tokenizers
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ingot.errors import CheckpointError, RequestError

NAMED_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")

LONG_TEXT_CHARS = 16_384


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); {_RESTORE}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a JSON {type(data).__name__}, not an object; {_RESTORE}")
    return data


_RESTORE = "copy it again from the model's checkpoint, or rebuild the engine"


def _token_str(value: Any) -> str | None:
    """tokenizer_config stores a special token as a string or as a serialized AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _load_chat_template(path: Path, config: dict) -> tuple[str | dict[str, str] | None, str]:
    """(the template, the file it is in): chat_template.jinja (transformers 5 layout) wins over
    chat_template.json, which wins over the template in tokenizer_config.json."""
    if (jinja := path / "chat_template.jinja").is_file():
        try:
            return jinja.read_text(encoding="utf-8"), str(jinja)
        except UnicodeDecodeError as exc:
            raise CheckpointError(f"{jinja} is not UTF-8 text ({exc}); {_RESTORE}") from None
    separate = _read_json(path / "chat_template.json")
    where = path / ("chat_template.json" if "chat_template" in separate else "tokenizer_config.json")
    template = separate.get("chat_template", config.get("chat_template"))
    if isinstance(template, list):  # [{"name": "default", "template": "..."}, {"name": "tool_use", ...}]
        template = {t["name"]: t["template"] for t in template}
    return template, str(where)


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks; render it as is."""

    tags: ClassVar[set[str]] = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body).set_lineno(lineno)


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Jinja's own tojson escapes HTML characters; templates expect plain json.dumps.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def compile_chat_template(source: str) -> jinja2.Template:
    """Compile a chat template in the sandboxed environment transformers uses (templates are untrusted)."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise CheckpointError(f"the tokenizer's chat template does not compile: {e} (line {e.lineno})") from e


class Tokenizer:
    def __init__(self, backend: tokenizers.Tokenizer, config: dict, generation_config: dict | None = None,
                 chat_template: str | dict[str, str] | None = None, name: str = "tokenizer",
                 chat_template_file: str | None = None) -> None:
        self._tok = backend
        self.config = config
        self.name = name
        self.chat_template = chat_template
        self.chat_template_file = chat_template_file or f"{name}'s chat template"  # named in template errors
        self.special_tokens = {k: s for k in NAMED_SPECIAL_TOKENS if (s := _token_str(config.get(k))) is not None}
        if config.get("split_special_tokens"):
            backend.encode_special_tokens = True
        self._add_missing_specials()
        gen = generation_config or {}
        self.bos_token_id = self.token_to_id(self.special_tokens.get("bos_token"))
        if self.bos_token_id is None and isinstance(gen.get("bos_token_id"), int):
            self.bos_token_id = gen["bos_token_id"]
        self.pad_token_id = self.token_to_id(self.special_tokens.get("pad_token"))
        eos = [self.token_to_id(self.special_tokens.get("eos_token")), *_as_list(gen.get("eos_token_id"))]
        self.eos_token_ids: tuple[int, ...] = tuple(dict.fromkeys(i for i in eos if i is not None))
        self._prepend_bos = bool(config.get("add_bos_token")) and self.bos_token_id is not None \
            and not self._post_processor_adds_bos()
        self._templates: dict[str, jinja2.Template] = {}

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        if not (path / "tokenizer.json").is_file():
            raise CheckpointError(
                f"no tokenizer.json in {path}: ingot reads fast (tokenizers-library) tokenizers only; "
                "convert a slow tokenizer once with transformers' AutoTokenizer(...).save_pretrained(dir)"
            )
        try:
            backend = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
        except Exception as exc:  # the tokenizers library raises a bare Exception on a malformed file
            raise CheckpointError(f"{path / 'tokenizer.json'} cannot be read as a tokenizer ({exc}); {_RESTORE}") \
                from None
        config = {**_read_json(path / "special_tokens_map.json"), **_read_json(path / "tokenizer_config.json")}
        generation_config = _read_json(path / "generation_config.json")
        try:
            template, template_file = _load_chat_template(path, config)
            return cls(backend, config, generation_config, template, name=str(path), chat_template_file=template_file)
        except (TypeError, ValueError, AttributeError, KeyError, jinja2.TemplateError) as exc:
            raise CheckpointError(f"the tokenizer files in {path} do not fit together ({type(exc).__name__}: {exc}); "
                                  f"{_RESTORE}") from None

    def _add_missing_specials(self) -> None:
        """Like transformers: special tokens named in the config but absent from tokenizer.json are added."""
        extra = self.config.get("extra_special_tokens") or self.config.get("additional_special_tokens") or []
        named = [*self.special_tokens.values(), *(_token_str(t) for t in _as_list(extra))]
        missing = [t for t in dict.fromkeys(named) if t and self._tok.token_to_id(t) is None]
        if missing:
            self._tok.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False) for t in missing])

    def _post_processor_adds_bos(self) -> bool:
        probe = self._tok.encode("a", add_special_tokens=True).ids
        return bool(probe) and probe[0] == self.bos_token_id

    # -- encode / decode -------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; special-token strings in it (e.g. <|im_start|>) become their ids."""
        if len(text) > LONG_TEXT_CHARS:  # encode_batch releases the GIL (encode does not): servers stay responsive
            ids = self._tok.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids
        else:
            ids = self._tok.encode(text, add_special_tokens=add_special_tokens).ids
        if add_special_tokens and self._prepend_bos:
            ids.insert(0, self.bos_token_id)
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        text = self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)
        if self._cleans_up:
            text = _clean_up_tokenization(text)
        return text

    @property
    def _cleans_up(self) -> bool:
        """transformers applies this WordPiece-era cleanup only to non-BPE models; it corrupts BPE text."""
        return bool(self.config.get("clean_up_tokenization_spaces")) and type(self._tok.model).__name__ != "BPE"

    def decode_stream(self, context_ids: list[int], skip_special_tokens: bool = True):
        """A tokenizers DecodeStream primed with `context_ids` (decoded as context, never emitted), or
        None where decode() post-processes what the backend returns (the WordPiece-era clean-up):
        the incremental detokenizer then re-decodes a window itself."""
        if self._cleans_up:
            return None
        from tokenizers.decoders import DecodeStream

        return DecodeStream(ids=list(context_ids), skip_special_tokens=skip_special_tokens)

    def step_stream(self, stream, token_id: int) -> str | None:
        """The text `token_id` completes in `stream` (None while a character is still split)."""
        return stream.step(self._tok, token_id)

    def token_to_id(self, token: str | None) -> int | None:
        return None if token is None else self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        """Raw vocabulary strings (e.g. 'Ġworld', '▁the', '<0xE2>'), not decoded text."""
        return [self._tok.id_to_token(i) for i in ids]

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce, added tokens included (= len(hf_tokenizer))."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    @cached_property
    def max_token_chars(self) -> int:
        """Characters in the longest vocabulary entry, added tokens included. A raw entry is never shorter
        than the text it stands for ('Ġthe' is ' the', '<0xE2>' one byte), so no token covers more of
        the input than this, short of a normalizer that merges characters."""
        return max(map(len, self._tok.get_vocab(with_added_tokens=True)), default=1)

    @cached_property
    def all_special_ids(self) -> set[int]:
        """Named special tokens plus every added token marked special (what skip_special_tokens drops)."""
        named = {self.token_to_id(t) for t in self.special_tokens.values()}
        added = {i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}
        return (named | added) - {None}

    # -- chat ------------------------------------------------------------------------------

    @property
    def has_chat_template(self) -> bool:
        return bool(self.chat_template)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, *,
                            tools: list[dict] | None = None, documents: list[dict] | None = None,
                            chat_template: str | None = None, **kwargs) -> str:
        """Render `messages` to prompt text with the model's template (the text, not ids: see encode_chat)."""
        template = self._get_template(chat_template, tools)
        # OpenAI clients send content=None / tool_calls=None; templates handle a missing key better.
        messages = [{k: v for k, v in m.items() if v is not None} for m in messages]
        variables = {**self.special_tokens, **kwargs}  # caller's kwargs override the special tokens
        where = "the chat template given" if chat_template else f"the chat template of {self.chat_template_file}"
        try:
            return template.render(messages=messages, tools=tools, documents=documents,
                                   add_generation_prompt=add_generation_prompt, **variables)
        except jinja2.TemplateError as e:
            raise RequestError(f"{where} rejected these messages: {e}") from e
        except Exception as e:  # a template's own bug (1/0, a missing key) must not become a server error
            raise RequestError(f"{where} failed on these messages ({type(e).__name__}: {e}); the template "
                               "needs fixing") from e

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> list[int]:
        """Template then encode. The template writes BOS itself when the model wants one, so no special
        tokens are added here (as transformers' apply_chat_template(tokenize=True)): never a double BOS."""
        return self.encode(self.apply_chat_template(messages, add_generation_prompt, **kwargs),
                           add_special_tokens=False)

    def _get_template(self, override: str | None, tools: list | None) -> jinja2.Template:
        source = override or self.chat_template
        if isinstance(source, dict):
            source = source.get("tool_use") if tools and "tool_use" in source else source.get("default")
        if not source:
            raise RequestError(
                f"{self.name} has no chat template (none in tokenizer_config.json or chat_template.jinja), so "
                "chat messages cannot be formatted: send a plain text prompt (/v1/completions, or LLM.generate "
                "with a string) or pass chat_template=..."
            )
        if not isinstance(source, str):
            raise RequestError(f"the chat template of {self.chat_template_file} is a JSON {type(source).__name__}, "
                               "not a string of Jinja; the template needs fixing")
        if source not in self._templates:
            try:
                self._templates[source] = compile_chat_template(source)
            except Exception as e:  # found at the first chat request: that request's error, not the server's
                cause = e.__cause__ or e
                where = "the chat template given" if override else f"the chat template of {self.chat_template_file}"
                raise RequestError(f"{where} does not compile ({type(cause).__name__}: {cause}); the template "
                                   "needs fixing") from e
        return self._templates[source]


def _clean_up_tokenization(text: str) -> str:
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                          (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(before, after)
    return text
