"""tool_choice "auto": the model's own call formats parsed back into tool_calls (no model needed)."""

from __future__ import annotations

import json

from ingot.serve.tools import ToolCalling

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def test_hermes_calls_after_text():
    text = 'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n' \
           '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'
    content, calls = ToolCalling(TOOLS, "auto", style="hermes").parse(text)
    assert content == "Let me look."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"}),
                                                                   ("get_weather", {"city": "Rome"})]


def test_llama3_json_calls_and_plain_text():
    calling = ToolCalling(TOOLS, "auto", style="llama3_json")
    content, calls = calling.parse('<|python_tag|>{"name": "get_weather", "parameters": {"city": "Oslo"}}')
    assert content is None and [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Oslo"})]
    assert calling.parse("It is sunny.") == ("It is sunny.", [])


def test_malformed_call_stays_text():
    text = "<tool_call>{not json</tool_call>"
    assert ToolCalling(TOOLS, "auto").parse(text) == (text, [])
