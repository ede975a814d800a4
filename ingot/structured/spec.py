"""StructuredOutput: what a request's answer must match — JSON (any object, or a schema), a regex,
one of a list of strings, or an EBNF grammar.

Checked once, at construction, without a tokenizer: the spec is parsed into a grammar by xgrammar
(schema, regex and EBNF errors surface here, named by the field), so a bad spec is refused where
the request is made and never reaches the engine. The engine compiles it against its tokenizer
(ingot/structured/grammar.py), cached by (kind, spec).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Literal

from ingot.errors import RequestError

Kind = Literal["json_object", "json_schema", "regex", "choice", "grammar"]
KINDS = ("json_object", "json_schema", "regex", "choice", "grammar")
# A spec is parsed on the API side and compiled on the engine's: bounded so no request holds either long.
MAX_SPEC_CHARS = 64 * 1024
MAX_CHOICES = 256


@dataclass(frozen=True)
class StructuredOutput:
    """kind and its spec as text: the schema's JSON (json_schema), the regex, the choices as a JSON
    list (choice), the EBNF (grammar), "" (json_object). `field` names what the client set, for
    errors (e.g. "response_format.json_schema.schema", "guided_regex")."""

    kind: Kind
    spec: str = ""
    field: str = "structured"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise RequestError(f"{self.field}: unknown kind {self.kind!r}; use one of {', '.join(KINDS)}")
        if not isinstance(self.spec, str) or len(self.spec) > MAX_SPEC_CHARS:
            raise RequestError(f"{self.field}: must be text of at most {MAX_SPEC_CHARS} characters")
        try:
            self.grammar()
        except RequestError:
            raise
        except Exception as exc:  # xgrammar raises RuntimeError / ValueError with the parser's message
            raise RequestError(f"{self.field}: this {self.kind.replace('_', ' ')} cannot be compiled: "
                               f"{_first_line(exc)}") from None

    # -- constructors ------------------------------------------------------------------------

    @classmethod
    def json(cls, schema: dict | str | None = None, field: str = "structured") -> StructuredOutput:
        """Any JSON object (schema None), or JSON valid under `schema` (a dict or its JSON text)."""
        if schema is None:
            return cls("json_object", "", field)
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as exc:
                raise RequestError(f"{field}: the schema is not valid JSON ({exc})") from None
        if not isinstance(schema, dict):
            raise RequestError(f"{field}: a JSON schema must be an object, not {type(schema).__name__}")
        return cls("json_schema", json.dumps(schema), field)  # property order is kept: it is the order generated

    @classmethod
    def regex(cls, pattern: str, field: str = "structured") -> StructuredOutput:
        if not isinstance(pattern, str) or not pattern:
            raise RequestError(f"{field}: a regex must be a non-empty string")
        return cls("regex", pattern, field)

    @classmethod
    def choice(cls, choices: list[str], field: str = "structured") -> StructuredOutput:
        if (not isinstance(choices, list) or not 0 < len(choices) <= MAX_CHOICES
                or not all(isinstance(c, str) and c for c in choices)):
            raise RequestError(f"{field}: choices must be a list of 1 to {MAX_CHOICES} non-empty strings")
        return cls("choice", json.dumps(choices), field)

    @classmethod
    def ebnf(cls, grammar: str, field: str = "structured") -> StructuredOutput:
        if not isinstance(grammar, str) or not grammar.strip():
            raise RequestError(f"{field}: a grammar must be non-empty EBNF text with a `root ::= ...` rule")
        return cls("grammar", grammar, field)

    # -- the grammar ---------------------------------------------------------------------------

    @property
    def key(self) -> tuple[str, str]:
        """What compiled grammars are cached by."""
        return self.kind, self.spec

    def grammar(self):
        """The spec parsed into an xgrammar Grammar (tokenizer-independent)."""
        import xgrammar as xgr

        if self.kind == "json_object":
            return xgr.Grammar.builtin_json_grammar()
        if self.kind == "json_schema":
            return xgr.Grammar.from_json_schema(self.spec, **JSON_FORMAT)
        if self.kind == "regex":
            return xgr.Grammar.from_regex(self.spec)
        if self.kind == "choice":
            # EBNF string literals escape as JSON strings do
            return xgr.Grammar.from_ebnf("root ::= " + " | ".join(json.dumps(c) for c in json.loads(self.spec)))
        return xgr.Grammar.from_ebnf(self.spec)


# Compact JSON, no free whitespace: a small model given the freedom wanders into runs of spaces
# and newlines that end only at max_tokens. strict_mode: no properties or items the schema does not
# name (OpenAI's strict).
JSON_FORMAT = dict(any_whitespace=False, separators=(",", ":"), strict_mode=True)


def _first_line(exc: Exception) -> str:
    """The parser's message without xgrammar's "[time] file.cc:line: " prefix."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return _SOURCE_PREFIX.sub("", lines[-1] if lines else type(exc).__name__)[:500]


_SOURCE_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ")
