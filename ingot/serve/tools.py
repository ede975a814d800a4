"""OpenAI tool calling on /v1/chat/completions: tools and tool_choice in, tool_calls out.

    tools ─▶ the model's chat template (tools=...) ─▶ generate ─▶ parse ─▶ message.tool_calls
                                                       │
    tool_choice "auto"      free text; the model's own call format is parsed back (below)
                "none"      tools shown to the template, the answer is text
                "required"  the grammar forces a JSON array of {"name", "parameters"} calls, each
                            one of the tools with arguments valid under its parameters schema
                {"type": "function", "function": {"name"}}  the grammar forces that function's
                            arguments: the answer is the arguments object itself

Call formats parsed under "auto", chosen from the chat template: Qwen2.5 / Qwen3 (Hermes)
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, and Llama 3.1's JSON
`{"name": ..., "parameters": {...}}` (optionally after <|python_tag|>, several joined by ';').
A template that knows no tools (SmolLM2's) gets them as a system message in the Hermes format.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field

from ingot.errors import RequestError
from ingot.serve.errors import bad_request
from ingot.structured import StructuredOutput

_HERMES_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")

    def to_dict(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class ToolCalling:
    tools: list[dict]  # OpenAI's {"type": "function", "function": {"name", "description", "parameters"}}
    mode: str  # auto | none | required | named
    name: str | None = None  # the named function
    style: str = "hermes"  # hermes | llama3_json: how the model writes calls under "auto"

    @classmethod
    def from_request(cls, req, template: str) -> ToolCalling | None:
        """None when the request has no tools; a 400 naming the field for a malformed one."""
        if not req.tools:
            if req.tool_choice not in (None, "none", "auto"):
                raise bad_request("tool_choice needs tools", "tool_choice")
            return None
        for i, tool in enumerate(req.tools):
            function = tool.get("function") if isinstance(tool, dict) else None
            if tool.get("type", "function") != "function" or not isinstance(function, dict) \
                    or not isinstance(function.get("name"), str) or not function["name"]:
                raise bad_request("each tool must be {\"type\": \"function\", \"function\": {\"name\": ..., "
                                  "\"parameters\": {...}}}", f"tools[{i}]")
        names = [t["function"]["name"] for t in req.tools]
        choice, name = req.tool_choice or "auto", None
        if isinstance(choice, dict):
            name = (choice.get("function") or {}).get("name")
            if name not in names:
                raise bad_request(f"tool_choice names function {name!r}, which is not among tools {names}",
                                  "tool_choice")
            choice = "named"
        elif choice not in ("auto", "none", "required"):
            raise bad_request("tool_choice must be 'auto', 'none', 'required' or "
                              "{\"type\": \"function\", \"function\": {\"name\": ...}}", "tool_choice")
        style = "llama3_json" if "<|python_tag|>" in template or "parameters" in template and \
            "<tool_call>" not in template else "hermes"
        calling = cls(req.tools, choice, name, style)
        calling.structured()  # a parameters schema that cannot compile is a 400 now
        return calling

    # -- prompt ----------------------------------------------------------------------------

    def messages(self, messages: list[dict], template: str) -> list[dict]:
        """The conversation for the template: arguments as objects (templates tojson them); for a
        template that knows no tools, the tools as a system message and calls/results as text."""
        out = [_with_parsed_arguments(m) for m in messages]
        if "tools" in template:
            return out
        listing = "\n".join(json.dumps(t) for t in self.tools)
        system = ("You may call one or more functions to assist with the user query. The functions:\n"
                  f"<tools>\n{listing}\n</tools>\nFor each call, return a JSON object with the function name "
                  "and arguments within <tool_call></tool_call> tags:\n<tool_call>\n"
                  "{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>")
        out = [_as_text(m) for m in out]
        if out and out[0]["role"] == "system":
            return [{**out[0], "content": f"{out[0]['content']}\n\n{system}"}, *out[1:]]
        return [{"role": "system", "content": system}, *out]

    # -- constraint ------------------------------------------------------------------------

    def parameters(self, name: str) -> dict:
        function = next(t["function"] for t in self.tools if t["function"]["name"] == name)
        return function.get("parameters") or {"type": "object", "properties": {}}

    def structured(self) -> StructuredOutput | None:
        try:
            if self.mode == "named":
                return StructuredOutput.json(self.parameters(self.name), field="tools")
            if self.mode == "required":
                calls = [{"type": "object", "properties": {"name": {"const": n}, "parameters": self.parameters(n)},
                          "required": ["name", "parameters"], "additionalProperties": False}
                         for n in (t["function"]["name"] for t in self.tools)]
                return StructuredOutput.json({"type": "array", "minItems": 1, "items": {"anyOf": calls}},
                                             field="tools")
        except RequestError as exc:
            raise bad_request(f"a tool's parameters schema cannot be enforced: {exc}", "tools") from None
        return None

    # -- output ----------------------------------------------------------------------------

    def parse(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """(content, tool calls) of a finished answer."""
        if self.mode == "named":
            return None, [ToolCall(self.name, text)]
        if self.mode == "required":
            try:
                return None, [ToolCall(c["name"], json.dumps(c["parameters"])) for c in json.loads(text)]
            except (json.JSONDecodeError, TypeError, KeyError):  # cut by max_tokens
                return text, []
        if self.mode == "none":
            return text, []
        return _parse_llama3(text) if self.style == "llama3_json" else _parse_hermes(text)


def _parse_hermes(text: str) -> tuple[str | None, list[ToolCall]]:
    start = text.find("<tool_call>")
    if start < 0:
        return text, []
    calls = []
    for body in _HERMES_CALL.findall(text[start:]):
        call = _call(body, "arguments")
        if call is None:
            return text, []  # not a well-formed call: leave the text as the model wrote it
        calls.append(call)
    content = text[:start].strip()
    return content or None, calls


def _parse_llama3(text: str) -> tuple[str | None, list[ToolCall]]:
    body = text.strip().removeprefix("<|python_tag|>").strip()
    if not body.startswith("{"):
        return text, []
    calls = [_call(part, "parameters") for part in body.split(";") if part.strip()]
    if not calls or any(c is None for c in calls):
        return text, []
    return None, calls


def _call(body: str, arguments_key: str) -> ToolCall | None:
    try:
        obj = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get(arguments_key, obj.get("arguments", obj.get("parameters", {})))
    return ToolCall(obj["name"], args if isinstance(args, str) else json.dumps(args))


def _with_parsed_arguments(message: dict) -> dict:
    """Clients send arguments as JSON text; templates write them with tojson, so they want objects."""
    if not message.get("tool_calls"):
        return message
    calls = []
    for call in message["tool_calls"]:
        function = dict(call.get("function") or {})
        if isinstance(function.get("arguments"), str):
            try:
                function["arguments"] = json.loads(function["arguments"])
            except json.JSONDecodeError:
                pass
        calls.append({**call, "function": function})
    return {**message, "tool_calls": calls}


def _as_text(message: dict) -> dict:
    """An assistant's calls or a tool's result as plain content (a template that knows no tools)."""
    content = message.get("content") or ""
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        content += "\n<tool_call>\n" + json.dumps({"name": function.get("name"),
                                                    "arguments": function.get("arguments")}) + "\n</tool_call>"
    if message["role"] == "tool":
        content = f"<tool_response>\n{content}\n</tool_response>"
    return {**{k: v for k, v in message.items() if k not in ("tool_calls", "tool_call_id")}, "content": content.strip()}


class ToolChatFormat:
    """ChatFormat's answers with tool calls: message.tool_calls and finish_reason "tool_calls".
    Streaming: a named function's arguments stream as they are generated (the first delta carries
    the call's id and name); under "required" and "auto" the text is held and the calls (or the
    content) are sent when the answer ends, since a call is known only once it is whole."""

    def __init__(self, chat_format, calling: ToolCalling) -> None:
        self._chat, self.calling = chat_format, calling
        self._held: dict[int, str] = {}
        self._call_ids: dict[int, str] = {}

    def __getattr__(self, name):  # id, chunk, response, opening, logprobs, ...: ChatFormat's
        return getattr(self._chat, name)

    def choice(self, index: int, out, job) -> dict:
        choice = self._chat.choice(index, out, job)
        content, calls = self.calling.parse(out.text)
        if calls:
            choice["message"] = {"role": "assistant", "content": content, "tool_calls": [c.to_dict() for c in calls]}
            choice["finish_reason"] = "tool_calls" if out.finish_reason == "stop" else out.finish_reason
        return choice

    def delta(self, index: int, text: str, token_ids: list[int], logprobs, offset: int,
              finish_reason: str | None, stop_reason) -> dict:
        choice = self._chat.delta(index, text, token_ids, logprobs, offset, finish_reason, stop_reason)
        if self.calling.mode == "none":
            return choice
        if self.calling.mode == "named":
            return self._named_delta(index, text, choice, finish_reason)
        self._held[index] = self._held.get(index, "") + text
        choice["delta"] = {}
        if finish_reason is None:
            return choice
        content, calls = self.calling.parse(self._held.pop(index))
        if content:
            choice["delta"]["content"] = content
        if calls:
            choice["delta"]["tool_calls"] = [{"index": i, **c.to_dict()} for i, c in enumerate(calls)]
            choice["finish_reason"] = "tool_calls" if finish_reason == "stop" else finish_reason
        return choice

    def _named_delta(self, index: int, text: str, choice: dict, finish_reason: str | None) -> dict:
        call: dict = {"index": 0, "function": {"arguments": text}}
        if index not in self._call_ids:
            self._call_ids[index] = ToolCall(self.calling.name, "").id
            call = {"index": 0, "id": self._call_ids[index], "type": "function",
                    "function": {"name": self.calling.name, "arguments": text}}
        choice["delta"] = {"tool_calls": [call]} if text or "id" in call else {}
        if finish_reason == "stop":
            choice["finish_reason"] = "tool_calls"
        return choice
