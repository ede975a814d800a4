"""Twenty JSON schemas of increasing difficulty, each with a valid instance.

Shared by the structured-output tests (every constrained output must validate) and by
bench/grammar_engines_cpu.py (compile time, and mask time along the tokens of the instance).
Every string has a maxLength and every array a maxItems, so that a constrained answer ends within
a few dozen tokens: the tests can keep max_tokens small and still see whole documents.
"""

from __future__ import annotations


def _obj(properties: dict, required: list[str] | None = None) -> dict:
    return {"type": "object", "properties": properties,
            "required": list(properties) if required is None else required, "additionalProperties": False}


_SMALL_INT = {"type": "integer", "minimum": 0, "maximum": 9}

# (name, schema, a valid instance)
SCHEMAS: list[tuple[str, dict, object]] = [
    ("boolean", _obj({"ok": {"type": "boolean"}}), {"ok": True}),
    ("short_string", _obj({"name": {"type": "string", "maxLength": 12}}), {"name": "Ada"}),
    ("bounded_integer", _obj({"age": {"type": "integer", "minimum": 0, "maximum": 120}}), {"age": 36}),
    ("enum", _obj({"color": {"enum": ["red", "green", "blue"]}}), {"color": "green"}),
    ("bounded_number", _obj({"score": {"type": "number", "minimum": 0, "maximum": 1}}), {"score": 0.5}),
    ("three_fields", _obj({"name": {"type": "string", "maxLength": 12},
                           "age": {"type": "integer", "minimum": 0, "maximum": 150},
                           "active": {"type": "boolean"}}), {"name": "Bob", "age": 7, "active": False}),
    ("optional_field", _obj({"id": {"type": "integer", "minimum": 1, "maximum": 999},
                             "nickname": {"type": "string", "maxLength": 10}}, ["id"]), {"id": 42}),
    ("int_array", _obj({"digits": {"type": "array", "items": _SMALL_INT, "minItems": 1, "maxItems": 3}}),
     {"digits": [3, 1, 4]}),
    ("enum_pair", _obj({"pair": {"type": "array", "items": {"enum": ["rock", "paper", "scissors"]},
                                 "minItems": 2, "maxItems": 2}}), {"pair": ["rock", "paper"]}),
    ("pattern", _obj({"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"}}), {"code": "ABC-123"}),
    ("const", _obj({"version": {"const": 2}, "kind": {"const": "point"}}), {"version": 2, "kind": "point"}),
    ("nested_object", _obj({"user": _obj({"name": {"type": "string", "maxLength": 12},
                                          "email": {"type": "string", "pattern": "^[a-z]{1,8}@[a-z]{1,8}\\.com$"}})}),
     {"user": {"name": "Eve", "email": "eve@mail.com"}}),
    ("object_array", _obj({"points": {"type": "array", "minItems": 1, "maxItems": 2,
                                      "items": _obj({"x": {"type": "integer", "minimum": 0, "maximum": 100},
                                                     "y": {"type": "integer", "minimum": 0, "maximum": 100}})}}),
     {"points": [{"x": 1, "y": 2}]}),
    ("any_of", _obj({"value": {"anyOf": [_SMALL_INT, {"type": "string", "maxLength": 5}]}}), {"value": "five"}),
    ("nullable", _obj({"middle_name": {"anyOf": [{"type": "string", "maxLength": 10}, {"type": "null"}]}}),
     {"middle_name": None}),
    ("matrix", _obj({"rows": {"type": "array", "minItems": 2, "maxItems": 2,
                              "items": {"type": "array", "items": _SMALL_INT, "minItems": 2, "maxItems": 2}}}),
     {"rows": [[1, 0], [0, 1]]}),
    ("date_pattern", _obj({"date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
                           "all_day": {"type": "boolean"}}), {"date": "2024-05-01", "all_day": True}),
    ("refs", {"$defs": {"point": _obj({"x": _SMALL_INT, "y": _SMALL_INT})},
              **_obj({"start": {"$ref": "#/$defs/point"}, "end": {"$ref": "#/$defs/point"}})},
     {"start": {"x": 0, "y": 0}, "end": {"x": 3, "y": 4}}),
    ("tagged_union", _obj({"shape": {"anyOf": [
        _obj({"kind": {"const": "circle"}, "radius": {"type": "integer", "minimum": 1, "maximum": 10}}),
        _obj({"kind": {"const": "square"}, "side": {"type": "integer", "minimum": 1, "maximum": 10}})]}}),
     {"shape": {"kind": "square", "side": 2}}),
    ("order", _obj({
        "id": {"type": "string", "pattern": "^ORD-[0-9]{4}$"},
        "items": {"type": "array", "minItems": 1, "maxItems": 3,
                  "items": _obj({"sku": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{2}$"},
                                 "qty": {"type": "integer", "minimum": 1, "maximum": 9}})},
        "status": {"enum": ["new", "paid", "shipped"]},
        "note": {"type": "string", "maxLength": 16},
        "shipping": _obj({"express": {"type": "boolean"},
                          "address": _obj({"city": {"type": "string", "maxLength": 12},
                                           "zip": {"type": "string", "pattern": "^[0-9]{5}$"}})})},
        ["id", "items", "status", "shipping"]),
     {"id": "ORD-0001", "items": [{"sku": "AB12", "qty": 2}], "status": "paid",
      "shipping": {"express": False, "address": {"city": "Paris", "zip": "75001"}}}),
]
