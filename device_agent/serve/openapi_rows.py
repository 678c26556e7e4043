"""The OpenAPI request schema of a model that takes table rows: one property per field, from the manifest's fields."""

from __future__ import annotations

from typing import Any

from device_agent.contract.fields import FieldSpec
from device_agent.contract.types import JsonDict

__all__ = ["rows_example", "rows_request_schema"]


def _value_schema(f: FieldSpec) -> JsonDict:
    if f.kind == "categorical":
        s: JsonDict = {"type": ["string", "null"] if f.nullable else "string"}
        cats = list(f.categories or ())
        if f.handle_unknown in ("ignore", "infrequent_if_exist", "use_encoded_value"):
            s["description"] = f"Known categories: {', '.join(cats)} (others are accepted, encoded as none, and counted)."
            s["examples"] = cats[:3]
        else:
            s["enum"] = cats + ([None] if f.nullable else [])
    else:
        s = {"type": ["number", "null"] if f.nullable else "number"}
        if f.min is not None and f.max is not None:
            s["description"] = f"Training range [{f.min:g}, {f.max:g}] ([serve] out_of_range: values outside are refused or counted)."
    if f.nullable:
        s["description"] = (s.get("description", "") + " null: missing (the pipeline imputes it).").strip()
    return s


def rows_request_schema(fields: tuple[FieldSpec, ...]) -> JsonDict:
    """``PredictRequest`` for a table model: ``{"instances": [row, ...]}`` or ``{"inputs": {field: [values]}}``."""
    names = [f.name for f in fields]
    row = {"type": "object", "required": names, "additionalProperties": False, "properties": {f.name: _value_schema(f) for f in fields}}
    columns = {"type": "object", "required": names, "additionalProperties": False,
               "properties": {f.name: {"type": "array", "minItems": 1, "items": _value_schema(f)} for f in fields}}
    options = {"top_k": {"type": "integer", "minimum": 0, "maximum": 1000, "description": "Labels per row for classifiers (0: none)."},
               "request_id": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[\\x21-\\x7e]+$"}}
    return {"description": "Table rows, validated field by field; a bad value is a 400 naming its row and field.",
            "anyOf": [
                {"type": "object", "required": ["instances"], "additionalProperties": False,
                 "properties": {"instances": {"type": "array", "minItems": 1, "items": row}, **options}},
                {"type": "object", "required": ["inputs"], "additionalProperties": False, "properties": {"inputs": columns, **options}},
            ]}


def rows_example(fields: tuple[FieldSpec, ...]) -> JsonDict:
    """One valid row (the first known category, the middle of the training range)."""
    row: dict[str, Any] = {}
    for f in fields:
        if f.kind == "categorical":
            row[f.name] = (f.categories or ("",))[0] if f.categories else None
        elif f.min is not None and f.max is not None:
            row[f.name] = (f.min + f.max) / 2
        else:
            row[f.name] = 0
    return {"example": {"instances": [row]}}
