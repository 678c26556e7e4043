"""Raw table rows validated field by field (``signature.fields`` of a version 2 manifest), before the runtime.

A model converted from a scikit-learn pipeline takes one ``[N, 1]`` input per table column. Clients
send rows as they have them::

    {"instances": [{"island": "Dream", "bill_length_mm": 41.1, "sex": null, ...}, ...]}   # row by row
    {"inputs": {"island": ["Dream", ...], "bill_length_mm": [41.1, ...], ...}}             # column by column

Each value is checked against its field: the type (numbers for numeric fields, strings for
categorical ones), ``null`` only where the pipeline imputes, categories the encoder knows (an
unknown one is accepted and counted when the encoder ignores unknowns, refused when it raises),
and the training range (``[serve] out_of_range``: ``reject``, or ``warn``: accepted and counted).
A bad value is an :class:`~device_agent.contract.errors.InvalidInput` naming the row, the field, the
value and what is allowed (HTTP 400); more rows than ``[api] max_batch`` is a 413.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from device_agent.contract.errors import InvalidInput, PayloadTooLarge
from device_agent.contract.fields import FieldSpec
from device_agent.contract.manifest import TensorSpec

__all__ = ["OUT_OF_RANGE", "FieldCounts", "Instances", "RowValidator", "instances_to_columns"]

#: what ``[serve] out_of_range`` may say
OUT_OF_RANGE = ("reject", "warn")
#: encoder settings under which a category it never saw is passed on (it encodes as all zeros)
_LENIENT = frozenset({"ignore", "infrequent_if_exist", "use_encoded_value"})


class Instances(dict[str, object]):
    """The rows of ``{"instances": [...]}``, as the body held them: :meth:`RowValidator.coerce` turns them into columns, so a
    bad row is refused (and counted) where every other bad input is. An empty mapping to anything else."""

    def __init__(self, rows: object) -> None:
        super().__init__()
        self.rows = rows


def _field_error(message: str, *, kind: str, row: int | None, field: str, expected: str, given: str) -> InvalidInput:
    """A bad value in a table row: ``row`` (0-based) and ``input`` (the field) say where."""
    return InvalidInput(message, kind=kind, input=field, expected=expected, given=given, row=row)


class FieldCounts:
    """Values accepted although outside the training profile, per field: unseen categories and out-of-range numbers.

    Cumulative (``GET /metrics``); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.unseen: dict[str, int] = {}
        self.out_of_range: dict[str, int] = {}

    def add(self, unseen: Mapping[str, int], out_of_range: Mapping[str, int]) -> None:
        with self._lock:
            for k, v in unseen.items():
                self.unseen[k] = self.unseen.get(k, 0) + v
            for k, v in out_of_range.items():
                self.out_of_range[k] = self.out_of_range.get(k, 0) + v

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {"unseen_category": dict(self.unseen), "out_of_range": dict(self.out_of_range)}


def _repr(value: object) -> str:
    text = "null" if value is None else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _where(row: int | None, name: str) -> str:
    return f"field {name!r}" if row is None else f"row {row}, field {name!r}"


def _allowed(f: FieldSpec) -> str:
    if f.kind == "categorical":
        text = "one of " + ", ".join(repr(c) for c in (f.categories or ()))
        if f.handle_unknown in _LENIENT:
            text = "a string (known: " + ", ".join(repr(c) for c in (f.categories or ())) + ")"
    else:
        text = "a number"
        if f.min is not None and f.max is not None:
            text += f" (training range [{f.min:g}, {f.max:g}])"
    return text + (" or null" if f.nullable else "")


def instances_to_columns(instances: object, fields: Sequence[FieldSpec], *, max_batch: int) -> dict[str, list[Any]]:
    """``{"instances": [...]}`` rows as columns by field name; a row that is not an object, lacks a field or has an
    unknown one is refused by its index."""
    if not isinstance(instances, list):
        raise InvalidInput(f'"instances" must be a list of row objects, got {type(instances).__name__}', kind="malformed",
                           expected="list of objects", given=type(instances).__name__)
    _check_rows(len(instances), max_batch)
    names = [f.name for f in fields]
    columns: dict[str, list[Any]] = {n: [] for n in names}
    want = len(names)
    for i, row in enumerate(instances):
        if not isinstance(row, dict):
            raise _field_error(f"row {i} must be an object of field values, got {type(row).__name__}; fields: {', '.join(names)}",
                                  kind="malformed", row=i, field="", expected="object", given=type(row).__name__)
        if len(row) != want or any(n not in row for n in names):
            _row_keys(i, row, fields)
        for n in names:
            columns[n].append(row[n])
    return columns


def _row_keys(i: int, row: Mapping[str, Any], fields: Sequence[FieldSpec]) -> None:
    names = [f.name for f in fields]
    extra = [k for k in row if k not in names]
    if extra:
        raise _field_error(f"row {i} has unknown field {extra[0]!r}; the model's fields: {', '.join(names)}",
                              kind="unknown_field", row=i, field=str(extra[0]), expected=", ".join(names), given=str(extra[0]))
    f = next(f for f in fields if f.name not in row)
    hint = " (send null: the pipeline imputes it)" if f.nullable else ""
    raise _field_error(f"row {i} is missing field {f.name!r}, {_allowed(f)}{hint}",
                          kind="missing_field", row=i, field=f.name, expected=_allowed(f), given="nothing")


def _check_rows(n: int, max_batch: int) -> None:
    if n > max_batch:
        raise PayloadTooLarge(f"the request holds {n} rows; this agent accepts at most {max_batch} ([api] max_batch). Split the request.",
                              kind="too_large", expected=f"≤ {max_batch}", given=str(n))
    if n == 0:
        raise InvalidInput("the request holds no rows; send at least one", kind="shape", expected="≥ 1 row", given="0")


class RowValidator:
    """Validates table requests for one model's fields; the same members as :class:`device_agent.serve.validate.Validator`."""

    def __init__(self, fields: tuple[FieldSpec, ...], specs: tuple[TensorSpec, ...], *, max_batch: int = 256, max_elements: int = 16 << 20,
                 out_of_range: str = "warn") -> None:
        if out_of_range not in OUT_OF_RANGE:
            raise ValueError(f"out_of_range is {out_of_range!r}; allowed: {', '.join(OUT_OF_RANGE)}")
        self.fields = fields
        self.specs = specs
        self.max_batch = max_batch
        self.max_elements = max_elements
        self.reject_out_of_range = out_of_range == "reject"
        self.counts = FieldCounts()
        by_input = {s.name: s for s in specs}
        self._dtypes = {f.name: np.dtype(object) if f.kind == "categorical" else np.dtype(by_input[f.input].dtype if f.input in by_input
                                                                                            else f.dtype) for f in fields}
        self._known = {f.name: frozenset(f.categories or ()) for f in fields}

    def signature_text(self) -> str:
        return ", ".join(f"{f.name} ({_allowed(f)})" for f in self.fields)

    def check_finite(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Nothing to do: a missing number (NaN) got here only where the pipeline imputes it."""

    def __call__(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return self.coerce(feeds)

    def coerce(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Columns by field name (lists of JSON values), or :class:`Instances` → one ``[N, 1]`` array per model input."""
        if isinstance(feeds, Instances):
            feeds = instances_to_columns(feeds.rows, self.fields, max_batch=self.max_batch)
        if not isinstance(feeds, Mapping):
            raise InvalidInput(f"inputs must be an object of columns by field name, got {type(feeds).__name__}; fields: {self.signature_text()}",
                               kind="malformed", expected="object", given=type(feeds).__name__)
        names = [f.name for f in self.fields]
        for k in feeds:
            if k not in self._dtypes:
                raise _field_error(f"unknown field {k!r}; the model's fields: {', '.join(names)}", kind="unknown_field", row=None,
                                      field=str(k), expected=", ".join(names), given=str(k))
        rows = None
        unseen: dict[str, int] = {}
        wide: dict[str, int] = {}
        out: dict[str, np.ndarray] = {}
        for f in self.fields:
            if f.name not in feeds:
                raise _field_error(f"missing field {f.name!r}, {_allowed(f)}", kind="missing_field", row=None, field=f.name,
                                      expected=_allowed(f), given="nothing")
            values = _column(feeds[f.name], f)
            if rows is None:
                rows = len(values)
                _check_rows(rows, self.max_batch)
            elif len(values) != rows:
                raise InvalidInput(f"field {f.name!r} has {len(values)} values but {names[0]!r} has {rows}; every column needs one per row",
                                   kind="shape", input=f.name, expected=str(rows), given=str(len(values)))
            out[f.input] = self._categorical(values, f, unseen) if f.kind == "categorical" else self._numeric(values, f, wide)
        if unseen or wide:
            self.counts.add(unseen, wide)
        return out

    def _categorical(self, values: list[Any], f: FieldSpec, unseen: dict[str, int]) -> np.ndarray:
        known = self._known[f.name]
        lenient = f.handle_unknown in _LENIENT
        col = list(values)
        for i, v in enumerate(values):
            if type(v) is str and v in known:
                continue
            if v is None:
                self._null(i, f)
                col[i] = ""  # how the converted pipeline's imputer sees a missing string
            elif not isinstance(v, str):
                self._wrong_type(i, f, v)
            elif lenient:
                unseen[f.name] = unseen.get(f.name, 0) + 1
            else:
                raise _field_error(f"row {i}, field {f.name!r}: {_repr(v)} is not a category this model knows; allowed: {_allowed(f)} "
                                      f"(its encoder has handle_unknown={f.handle_unknown!r})",
                                      kind="unknown_category", row=i, field=f.name, expected=_allowed(f), given=_repr(v))
        return np.array(col, dtype=object).reshape(-1, 1)

    def _numeric(self, values: list[Any], f: FieldSpec, wide: dict[str, int]) -> np.ndarray:
        col = list(values)
        lo, hi = f.min, f.max
        for i, v in enumerate(values):
            t = type(v)
            if t is float or t is int:
                if lo is not None and hi is not None and not lo <= v <= hi:
                    if self.reject_out_of_range:
                        raise _field_error(f"row {i}, field {f.name!r}: {_repr(v)} is outside the training range [{lo:g}, {hi:g}]; "
                                              "this agent refuses such values ([serve] out_of_range = reject; 'warn' accepts and counts them)",
                                              kind="out_of_range", row=i, field=f.name, expected=f"[{lo:g}, {hi:g}]", given=_repr(v))
                    wide[f.name] = wide.get(f.name, 0) + 1
                if t is float and not math.isfinite(v):
                    self._wrong_type(i, f, v)
            elif v is None:
                self._null(i, f)
                col[i] = math.nan
            else:
                self._wrong_type(i, f, v)
        dtype = self._dtypes[f.name]
        try:
            arr = np.array(col, dtype=dtype)
        except (OverflowError, ValueError):
            raise InvalidInput(f"field {f.name!r}: a value does not fit {dtype.name}", kind="field_type", input=f.name,
                               expected=dtype.name, given="too large") from None
        if dtype.kind in "iu" and any(type(v) is float and not v.is_integer() for v in values):
            i = next(i for i, v in enumerate(values) if type(v) is float and not v.is_integer())
            self._wrong_type(i, f, values[i], want="a whole number")
        return arr.reshape(-1, 1)

    def _null(self, i: int, f: FieldSpec) -> None:
        if not f.nullable:
            raise _field_error(f"row {i}, field {f.name!r} is null, but the pipeline does not impute it; send {_allowed(f)}",
                                  kind="null", row=i, field=f.name, expected=_allowed(f), given="null")

    def _wrong_type(self, i: int, f: FieldSpec, v: Any, *, want: str | None = None) -> None:
        given = "a non-finite number" if isinstance(v, float) else type(v).__name__ if v is not None else "null"
        given = {"str": "a string", "bool": "a boolean", "int": "an integer", "float": "a number", "list": "a list", "dict": "an object"}.get(given, given)
        raise _field_error(f"row {i}, field {f.name!r}: {_repr(v)} is {given}; allowed: {want or _allowed(f)}",
                              kind="field_type", row=i, field=f.name, expected=want or _allowed(f), given=_repr(v))


def _column(value: Any, f: FieldSpec) -> list[Any]:
    """A column of JSON values: a list of scalars, or of one-element lists (the ``[N, 1]`` tensor form)."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, list):
        raise InvalidInput(f"field {f.name!r} must be a list of values, one per row, got {type(value).__name__}", kind="malformed",
                           input=f.name, expected="list", given=type(value).__name__)
    if value and isinstance(value[0], list):
        if not all(isinstance(v, list) and len(v) == 1 for v in value):
            raise InvalidInput(f"field {f.name!r} must hold one value per row ([v, ...] or [[v], ...])", kind="shape", input=f.name,
                               expected="[N] or [N, 1]", given="nested lists")
        return [v[0] for v in value]
    return value
