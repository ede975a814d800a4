"""Structured output and tools on the real SmolLM2 behind `ingot serve`, through the openai client.

The twenty schemas of tests/helpers_schemas.py go out as concurrent requests (the engine batches
them), greedy and sampled, half of them streamed: every answer validates with jsonschema."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import pydantic
import pytest

from tests.helpers_schemas import SCHEMAS

pytestmark = pytest.mark.slow

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 20}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The time in a timezone",
    "parameters": {"type": "object", "properties": {"timezone": {"type": "string", "maxLength": 20}},
                   "required": ["timezone"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def _schema_answer(client, index: int, name: str, schema: dict) -> tuple[str, str]:
    body = dict(model="smollm2", max_tokens=160, temperature=0.0 if index % 2 == 0 else 1.0, seed=index,
                messages=[{"role": "user", "content": f"Answer with JSON for: {name.replace('_', ' ')}"}],
                response_format={"type": "json_schema",
                                 "json_schema": {"name": name, "schema": schema, "strict": True}})
    if index % 4 < 2:
        out = client.chat.completions.create(**body)
        return out.choices[0].message.content, out.choices[0].finish_reason
    text, finish = "", None
    for chunk in client.chat.completions.create(**body, stream=True):
        text += chunk.choices[0].delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
    return text, finish


def test_twenty_schemas_greedy_and_sampled_streamed_and_not(smol_server):
    client = smol_server.client()
    # schema i: greedy when i is even, sampled when odd; streamed when i % 4 >= 2 — each of the four
    # combinations covers five schemas (one request per schema keeps CI time in bounds)
    jobs = [(i, name, schema) for i, (name, schema, _) in enumerate(SCHEMAS)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda job: _schema_answer(client, *job), jobs))
    for (_, name, schema), (text, finish) in zip(jobs, answers):
        assert finish == "stop", (name, text)
        jsonschema.validate(json.loads(text), schema)


def test_regex_choice_and_json_object_on_completions(smol_server):
    client = smol_server.client()
    regex = client.completions.create(model="smollm2", prompt="A US phone number:", max_tokens=20, temperature=1.0,
                                      seed=1, n=3, extra_body={"guided_regex": r"\(\d{3}\) \d{3}-\d{4}"})
    assert all(c.finish_reason == "stop" for c in regex.choices)
    assert all(__import__("re").fullmatch(r"\(\d{3}\) \d{3}-\d{4}", c.text) for c in regex.choices)
    choice = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Is Paris in France?"}],
                                            max_tokens=5, extra_body={"guided_choice": ["yes", "no"]})
    assert choice.choices[0].message.content in ("yes", "no")
    obj = client.chat.completions.create(model="smollm2", max_tokens=60, temperature=0,
                                         messages=[{"role": "user", "content": "Give a JSON object with a name."}],
                                         response_format={"type": "json_object"})
    if obj.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(obj.choices[0].message.content), dict)


class City(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=20)
    country: str = pydantic.Field(max_length=20)
    population_millions: int = pydantic.Field(ge=0, le=100)


def test_parse_with_a_pydantic_model(smol_server):
    client = smol_server.client()
    parse = getattr(client.chat.completions, "parse", None) or client.beta.chat.completions.parse
    out = parse(model="smollm2", messages=[{"role": "user", "content": "Describe Paris."}], max_tokens=80,
                temperature=0, response_format=City)
    assert isinstance(out.choices[0].message.parsed, City)


def test_tools_required_named_and_streamed(smol_server):
    client = smol_server.client()
    params = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}
    required = client.chat.completions.create(model="smollm2", messages=ASK, tools=[WEATHER, TIME],
                                              tool_choice="required", max_tokens=120, temperature=0)
    calls = required.choices[0].message.tool_calls
    assert calls and required.choices[0].finish_reason == "tool_calls"
    for call in calls:
        jsonschema.validate(json.loads(call.function.arguments), params[call.function.name])
    named = dict(model="smollm2", messages=ASK, tools=[WEATHER, TIME], max_tokens=60, temperature=0,
                 tool_choice={"type": "function", "function": {"name": "get_weather"}})
    whole = client.chat.completions.create(**named).choices[0].message.tool_calls
    assert [c.function.name for c in whole] == ["get_weather"]
    jsonschema.validate(json.loads(whole[0].function.arguments), params["get_weather"])
    name, arguments, ids = None, "", set()
    for chunk in client.chat.completions.create(**named, stream=True):
        for delta in chunk.choices[0].delta.tool_calls or []:
            ids |= {delta.id} - {None}
            name = delta.function.name or name
            arguments += delta.function.arguments or ""
    assert (name, arguments, len(ids)) == ("get_weather", whole[0].function.arguments, 1)
    # the tool's answer continues the conversation
    follow = client.chat.completions.create(model="smollm2", tools=[WEATHER, TIME], max_tokens=24, temperature=0,
                                            messages=[*ASK, {"role": "assistant", "content": None,
                                                             "tool_calls": [c.model_dump() for c in whole]},
                                                      {"role": "tool", "tool_call_id": whole[0].id,
                                                       "content": "18 degrees, sunny"}])
    assert follow.choices[0].message.content
