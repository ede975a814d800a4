"""The request fields that constrain the answer, as OpenAI and vLLM spell them, to one StructuredOutput.

    response_format {"type": "json_object"} | {"type": "json_schema", "json_schema": {"name", "schema", "strict"}}
    guided_json (schema, dict or text) | guided_regex | guided_choice | guided_grammar (EBNF)   vLLM's extra_body
    structured_outputs {"json" | "regex" | "choice" | "grammar" | "json_object": ...}          vLLM's newer form

At most one may be set. A spec that does not parse is a 400 naming the field the client used.
"""

from __future__ import annotations

from ingot.errors import RequestError
from ingot.serve.errors import bad_request
from ingot.structured import StructuredOutput

_GUIDED = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice", "guided_grammar": "grammar"}


def structured_output(req) -> StructuredOutput | None:
    """The one constraint `req` asks for (None: none), checked here: RequestError -> 400."""
    given = [name for name in ("response_format", *_GUIDED, "structured_outputs") if _asks(req, name)]
    if len(given) > 1:
        raise bad_request(f"{' and '.join(given)} are both set: give one constraint", given[1])
    if not given:
        return None
    name = given[0]
    try:
        if name == "response_format":
            return _response_format(req.response_format)
        if name == "structured_outputs":
            return _structured_outputs(req.structured_outputs)
        return _make(_GUIDED[name], getattr(req, name), name)
    except RequestError as exc:
        raise bad_request(str(exc), str(exc).split(":", 1)[0]) from None


def _asks(req, name: str) -> bool:
    value = getattr(req, name, None)
    if name == "response_format":
        return value is not None and value.get("type", "text") != "text"
    return value is not None


def _make(kind: str, value, field: str) -> StructuredOutput:
    if kind == "json":
        if not isinstance(value, (dict, str)):
            raise RequestError(f"{field}: must be a JSON schema (an object, or its JSON text)")
        return StructuredOutput.json(value, field=field)
    if kind == "json_object":
        return StructuredOutput.json(None, field=field)
    if kind == "regex":
        return StructuredOutput.regex(value, field=field)
    if kind == "choice":
        return StructuredOutput.choice(value, field=field)
    return StructuredOutput.ebnf(value, field=field)


def _response_format(value: dict) -> StructuredOutput:
    kind = value.get("type")
    if kind == "json_object":
        return StructuredOutput.json(None, field="response_format")
    if kind != "json_schema":
        raise RequestError(f"response_format.type: {kind!r} is not one of 'text', 'json_object', 'json_schema'")
    spec = value.get("json_schema")
    if not isinstance(spec, dict) or "schema" not in spec:
        raise RequestError("response_format.json_schema: must be an object with a 'schema' (and a 'name')")
    return _make("json", spec["schema"], "response_format.json_schema.schema")


def _structured_outputs(value) -> StructuredOutput:
    keys = [k for k in ("json", "regex", "choice", "grammar", "json_object") if isinstance(value, dict)
            and value.get(k) not in (None, False)]
    if len(keys) != 1:
        raise RequestError("structured_outputs: must set exactly one of json, regex, choice, grammar, json_object")
    return _make(keys[0], value[keys[0]], f"structured_outputs.{keys[0]}")
