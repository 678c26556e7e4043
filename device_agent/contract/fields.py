"""Schema version 2 of the manifest: a model's raw input described field by field, and string tensors.

A scikit-learn pipeline converted whole takes one input per table column, each ``[N, 1]`` of its
own type (strings stay strings). ``signature.fields`` tells a device what each may hold, from the
training data's profile, so it can validate a JSON row by field::

    {"name": "island", "input": "island", "dtype": "string", "kind": "categorical",
     "categories": ["Biscoe", "Dream", "Torgersen"],   # seen in training, the encoder's known values
     "handle_unknown": "ignore",                        # the encoder's setting: "error" refuses other values
     "nullable": true, "imputed": true,                 # missing is allowed: the pipeline imputes it
     "null": ""}                                        # how a missing string is sent ("" ; numbers: NaN)
    {"name": "bill_length_mm", "input": "bill_length_mm", "dtype": "float64", "kind": "numeric",
     "min": 32.1, "max": 59.6, "nullable": true, "imputed": true}

``min``/``max`` are the training range (values outside it are allowed, and drift telemetry shows
them); ``nullable`` is false for a column the pipeline does not impute (a NaN there would reach the
model). Version 2 also allows dtype ``string`` in tensor specs and self-test tensors
(``{"dtype": "string", "shape": [...], "values": [...]}``). edgekit writes version 2 only when a
manifest uses any of this (:func:`schema_version_for`), so a manifest an older agent can serve
still says 1; readers accept both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from device_agent.contract.types import JsonDict

__all__ = ["KINDS", "FieldSpec", "schema_version_for"]

KINDS = ("numeric", "categorical")


@dataclass(frozen=True)
class FieldSpec:
    """One field of the raw input (a table column): its type, allowed values, range, and whether it may be missing."""

    name: str
    input: str
    dtype: str
    kind: str
    categories: tuple[str, ...] | None = None
    handle_unknown: str | None = None
    min: float | None = None
    max: float | None = None
    nullable: bool = False
    imputed: bool = False

    @classmethod
    def from_dict(cls, d: JsonDict, where: str, error: type[ValueError]) -> FieldSpec:
        missing = [k for k in ("name", "input", "dtype", "kind") if k not in d]
        if missing:
            raise error(f"{where} is missing {', '.join(missing)}")
        if d["kind"] not in KINDS:
            raise error(f"{where}.kind is {d['kind']!r}; allowed: {', '.join(KINDS)}")
        cats = d.get("categories")
        return cls(str(d["name"]), str(d["input"]), str(d["dtype"]), str(d["kind"]), tuple(str(c) for c in cats) if cats is not None else None,
                   d.get("handle_unknown"), _num(d.get("min")), _num(d.get("max")), bool(d.get("nullable", False)),
                   bool(d.get("imputed", False)))

    def to_dict(self) -> JsonDict:
        out: JsonDict = {"name": self.name, "input": self.input, "dtype": self.dtype, "kind": self.kind}
        if self.kind == "categorical":
            out |= {"categories": list(self.categories or ()), "handle_unknown": self.handle_unknown, "null": ""}
        else:
            out |= {"min": self.min, "max": self.max}
        return out | {"nullable": self.nullable, "imputed": self.imputed}


def _num(v: Any) -> float | None:
    return None if v is None else float(v)


def schema_version_for(doc: JsonDict) -> int:
    """1, unless the manifest uses what version 2 added (``signature.fields``, string tensors): then 2."""
    sig = doc.get("signature") or {}
    specs = list(sig.get("inputs") or []) + list(sig.get("outputs") or [])
    specs += [t for a in doc.get("artifacts") or [] for t in list(a.get("inputs") or []) + list(a.get("outputs") or [])]
    return 2 if sig.get("fields") or any(t.get("dtype") == "string" for t in specs) else 1
