"""OpenAI-shaped errors: every 4xx/5xx body is

    {"error": {"message": "...", "type": "invalid_request_error", "param": "temperature", "code": null}}

so that OpenAI clients raise their usual exception classes (BadRequestError, NotFoundError, ...)
with a message that names the field.
"""

from __future__ import annotations

import json
import re

from pydantic import ValidationError
from starlette.responses import JSONResponse

# SamplingParams names the field as "SamplingParams.<field>=..."; lift it into `param`.
_PARAM_IN_MESSAGE = re.compile(r"SamplingParams\.(\w+)=")


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)

    def sse(self) -> str:
        """The error as one server-sent event, for failures after a stream has started."""
        return f"data: {json.dumps(self.body())}\n\n"


class NonStandardJSON(ValueError):
    """NaN, Infinity or -Infinity in a body: Python's json module and pydantic's reader take them."""


def _refuse_constant(literal: str):
    raise NonStandardJSON(f"{literal} is not a JSON number (JSON has no NaN or infinities); send a finite number")


def loads_json(raw: bytes | str):
    """json.loads that refuses the non-standard literals (NonStandardJSON, a ValueError, as json's own errors)."""
    return json.loads(raw, parse_constant=_refuse_constant)


def check_standard_json(raw: bytes) -> None:
    """APIError 400 when a body that parsed holds NaN or an infinity anywhere, even in a free-form object
    (response_format, tools, an unknown field) that no numeric check sees."""
    if b"NaN" not in raw and b"Infinity" not in raw:  # almost every body: no second parse
        return
    try:
        loads_json(raw)
    except NonStandardJSON as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from None
    except ValueError:  # not JSON at all: the validator has said so already
        pass


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param)


def from_request_error(exc: Exception, param: str | None = None) -> APIError:
    """An ingot RequestError (raised by SamplingParams, the tokenizer or the engine) as a 400."""
    message = str(exc)
    match = _PARAM_IN_MESSAGE.search(message)
    return bad_request(message, match.group(1) if match else param)


def from_validation_error(exc: ValidationError) -> APIError:
    """The first pydantic error as a 400 naming the field (`messages[0].role`), not FastAPI's 422."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    if first["type"] == "json_invalid":
        return bad_request(f"the request body is not valid JSON: {first['msg']}")
    param = _loc_to_param(first["loc"])
    if not param:
        return bad_request(f"the request body must be a JSON object: {first['msg']}")
    more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
    return bad_request(f"{param}: {first['msg']}{more}", param)


def _loc_to_param(loc: tuple) -> str:
    """('messages', 0, 'role') -> 'messages[0].role'. Pydantic adds union-branch names such as
    'str' or 'list[int]' to the location; they mean nothing to a client, so they are dropped."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in part or part in ("str", "int", "float", "bool", "function-after", "function-wrap"):
            continue
        else:
            out += f".{part}" if out else part
    return out
