"""Input validation against the manifest's source-layout signature, before anything reaches a runtime.

Checks, in order: input names (unknown / missing), conversion of JSON lists, dtype (safe casts
only), shape (rank, fixed dims, symbolic dims bound consistently across inputs), size limits
(batch, total elements), and finally finiteness. Every failure is an :class:`InvalidInput`
carrying ``kind``, ``input``, ``expected`` and ``given``, with a message that says what to change.

Safe casts are defined on values, not only on dtypes, so JSON numbers work:

- float → float: allowed unless a finite value overflows the target (e.g. 1e6 to float16)
- int → float: allowed when every value is represented exactly (ints up to 2**24 for float32)
- int → int: allowed when every value fits the target's range
- bool → bool only; float → int and anything → bool are refused
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from device_agent.contract.errors import InvalidInput, PayloadTooLarge
from device_agent.contract.manifest import TensorSpec

__all__ = ["Validator", "describe_spec", "format_shape"]

#: numpy's most axes: deeper JSON nesting is refused by name, not as a "ragged list"
_MAX_RANK = 64


def format_shape(shape: tuple[Any, ...] | list[Any]) -> str:
    return "[" + ", ".join(str(d) if d is not None else "?" for d in shape) + "]"


def describe_spec(spec: TensorSpec) -> str:
    return f"{spec.dtype} {format_shape(spec.shape)}"


class Validator:
    """Validates requests for one signature. Cheap on the fast path (ndarray of the right dtype)."""

    def __init__(self, specs: tuple[TensorSpec, ...], *, max_batch: int = 256, max_elements: int = 16 << 20) -> None:
        self.specs = specs
        self.max_batch = max_batch
        self.max_elements = max_elements
        self._by_name = {s.name: s for s in specs}
        self._dtypes = {s.name: np.dtype(s.dtype) for s in specs}
        self._float = {s.name for s in specs if np.issubdtype(np.dtype(s.dtype), np.floating)}
        # the batch axis: a leading symbolic dim; limited by max_batch
        self._batch_symbols = {s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], str)}
        # fast path for the common case (one input, symbolic batch, fixed other dims): an ndarray of the
        # right dtype and shape is accepted with a few comparisons; anything else takes the full path
        # (name, dtype, the dims after the batch axis, the most rows that fit both max_batch and max_elements)
        self._fast: tuple[str, np.dtype[Any], tuple[int, ...], int] | None = None
        if len(specs) == 1 and specs[0].shape and isinstance(specs[0].shape[0], str) and all(
                isinstance(d, int) and d >= 0 for d in specs[0].shape[1:]):
            s = specs[0]
            rest = tuple(d for d in s.shape[1:] if isinstance(d, int))  # all of them (checked above)
            per_row = int(np.prod(rest, dtype=np.int64))
            self._fast = (s.name, np.dtype(s.dtype), rest, min(max_batch, max_elements // per_row) if per_row else max_batch)
        self._single_float = specs[0].name if len(specs) == 1 and specs[0].name in self._float else None

    def __call__(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        arrays = self.coerce(feeds)
        self.check_finite(arrays)
        return arrays

    def signature_text(self) -> str:
        return ", ".join(f"{s.name} ({describe_spec(s)})" for s in self.specs)

    def coerce(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Names, dtypes, shapes and limits; returns arrays ready for the backend (source layout)."""
        fast = self._fast
        if fast is not None and type(feeds) is dict and len(feeds) == 1:
            # a request's fixed cost counts (a small model runs in ~40 µs): attribute reads and tuple
            # compares only; the rank is implied by the dims after the batch axis, the element limit by the row bound
            x = feeds.get(fast[0])
            if type(x) is np.ndarray and x.shape[1:] == fast[2] and x.shape and 0 < x.shape[0] <= fast[3]:
                if x.dtype is fast[1] or x.dtype == fast[1]:
                    return {fast[0]: x}
                if x.dtype.kind == "f" and fast[1].kind == "f":  # JSON numbers, packed as float64, for a float32 input
                    y = _narrowed(x, fast[1])
                    if y is not None:
                        return {fast[0]: y}
        if not isinstance(feeds, Mapping):
            raise InvalidInput(
                f"inputs must be an object mapping input names to tensors, got {type(feeds).__name__}; the model takes: {self.signature_text()}",
                kind="malformed", expected="object", given=type(feeds).__name__,
            )
        unknown = [k for k in feeds if k not in self._by_name]
        if unknown:
            raise InvalidInput(
                f"unknown input {unknown[0]!r}; the model takes: {self.signature_text()}",
                kind="unknown_input", input=str(unknown[0]), expected=", ".join(self._by_name), given=str(unknown[0]),
            )
        missing = [s.name for s in self.specs if s.name not in feeds]
        if missing:
            s = self._by_name[missing[0]]
            raise InvalidInput(
                f"missing input {s.name!r} ({describe_spec(s)}); the model takes: {self.signature_text()}",
                kind="missing_input", input=s.name, expected=describe_spec(s), given="nothing",
            )
        out: dict[str, np.ndarray] = {}
        bound: dict[str, tuple[int, str]] = {}
        total = 0
        for spec in self.specs:
            x = self._array(feeds[spec.name], spec)
            x = self._cast(x, spec)
            self._check_shape(x, spec, bound)
            total += x.size
            out[spec.name] = x
        if total > self.max_elements:
            raise PayloadTooLarge(
                f"the request holds {total:,} tensor elements; this agent accepts at most {self.max_elements:,} "
                "([api] max_elements). Split it into smaller batches.",
                kind="too_large", expected=f"≤ {self.max_elements} elements", given=str(total),
            )
        return out

    def check_finite(self, arrays: Mapping[str, np.ndarray]) -> None:
        name = self._single_float
        if name is not None and _all_finite(arrays[name]):
            return
        for name, x in arrays.items():
            if name not in self._float or _all_finite(x):
                continue
            nan = int(np.isnan(x).sum())
            inf = int(x.size - nan - np.isfinite(x).sum())
            first = [int(i) for i in np.argwhere(~np.isfinite(x))[0]]
            raise InvalidInput(
                f"input {name!r} has {nan} NaN and {inf} infinite value(s) (first at {first}); the model takes finite values only",
                kind="nonfinite", input=name, expected="finite values", given=f"{nan} NaN, {inf} inf",
            )

    # --- steps ---------------------------------------------------------------------------------

    def _array(self, value: Any, spec: TensorSpec) -> np.ndarray:
        if isinstance(value, np.ndarray):
            return value
        if isinstance(value, (str, bytes, dict)) or value is None:
            raise InvalidInput(
                f"input {spec.name!r} must be a (nested) list of numbers, got {type(value).__name__}",
                kind="malformed", input=spec.name, expected=describe_spec(spec), given=type(value).__name__,
            )
        depth, v = 0, value
        while isinstance(v, list) and depth <= _MAX_RANK:
            depth, v = depth + 1, v[0] if v else None
        if depth > _MAX_RANK:
            raise InvalidInput(
                f"input {spec.name!r} is nested more than {_MAX_RANK} lists deep; expected {describe_spec(spec)} ({len(spec.shape)} levels)",
                kind="shape", input=spec.name, expected=describe_spec(spec), given=f"> {_MAX_RANK} levels",
            )
        try:
            x = np.asarray(value)
        except (ValueError, TypeError):
            raise InvalidInput(
                f"input {spec.name!r} is a ragged nested list (rows of different lengths); expected {describe_spec(spec)}",
                kind="shape", input=spec.name, expected=describe_spec(spec), given="ragged list",
            ) from None
        if x.dtype == object or x.dtype.kind in "USV":
            raise InvalidInput(
                f"input {spec.name!r} holds non-numeric values ({'strings' if x.dtype.kind in 'US' else 'mixed types or nulls'}); "
                f"expected {describe_spec(spec)}",
                kind="dtype", input=spec.name, expected=spec.dtype, given="strings" if x.dtype.kind in "US" else "mixed",
            )
        return x

    def _cast(self, x: np.ndarray, spec: TensorSpec) -> np.ndarray:
        target = self._dtypes[spec.name]
        src = x.dtype
        if src == target:
            return x
        refuse = None
        if target.kind == "b" or src.kind == "b":
            refuse = "booleans only convert to and from bool"
        elif target.kind == "f" and src.kind == "f":
            narrowed = _narrowed(x, target)
            if narrowed is None:
                refuse = f"values overflow {target.name} (largest is {float(np.finfo(target).max):g})"
            else:
                return narrowed
        elif target.kind == "f" and src.kind in "iu":
            y = x.astype(target)
            if np.array_equal(y.astype(src), x):
                return y
            refuse = f"some integers are not exactly representable in {target.name}"
        elif target.kind in "iu" and src.kind in "iu":
            info = np.iinfo(target)
            if x.size == 0 or (x.min() >= info.min and x.max() <= info.max):
                return x.astype(target)
            refuse = f"values outside {target.name}'s range [{info.min}, {info.max}]"
        elif target.kind in "iu" and src.kind == "f":
            refuse = "floats are not cast to integers; send whole numbers without a decimal point or cast on the client"
        else:
            refuse = f"{src.name} does not convert to {target.name}"
        raise InvalidInput(
            f"input {spec.name!r} expects {target.name}; the request gives {src.name}: {refuse}",
            kind="dtype", input=spec.name, expected=target.name, given=src.name,
        )

    def _check_shape(self, x: np.ndarray, spec: TensorSpec, bound: dict[str, tuple[int, str]]) -> None:
        want = spec.shape
        if x.ndim != len(want):
            hint = ""
            if x.ndim == len(want) - 1 and _dims_match(x.shape, want[1:]):
                hint = " Add the batch axis (wrap the sample in one more list, or x[None] in numpy)."
            elif x.ndim == len(want) + 1 and x.shape[0] == 1 and _dims_match(x.shape[1:], want):
                hint = " Remove the extra leading axis."
            raise InvalidInput(
                f"input {spec.name!r} expects shape {format_shape(want)} ({spec.dtype}); the request gives {format_shape(list(x.shape))}.{hint}",
                kind="shape", input=spec.name, expected=format_shape(want), given=format_shape(list(x.shape)),
            )
        for axis, (d, n) in enumerate(zip(want, x.shape, strict=True)):
            if isinstance(d, int) and d >= 0:
                if n != d:
                    raise InvalidInput(
                        f"input {spec.name!r} expects shape {format_shape(want)} ({spec.dtype}); the request gives "
                        f"{format_shape(list(x.shape))}: axis {axis} must be {d}",
                        kind="shape", input=spec.name, expected=format_shape(want), given=format_shape(list(x.shape)),
                    )
                continue
            if n == 0:
                raise InvalidInput(
                    f"input {spec.name!r} has an empty axis {axis} ({format_shape(list(x.shape))}); send at least one element",
                    kind="shape", input=spec.name, expected=format_shape(want), given=format_shape(list(x.shape)),
                )
            if isinstance(d, str) and d not in ("?", ""):
                prev = bound.get(d)
                if prev is not None and prev[0] != n:
                    raise InvalidInput(
                        f"dimension {d!r} is {prev[0]} for input {prev[1]!r} but {n} for input {spec.name!r}; it must be the same",
                        kind="shape", input=spec.name, expected=f"{d}={prev[0]}", given=f"{d}={n}",
                    )
                bound[d] = (n, spec.name)
                if axis == 0 and d in self._batch_symbols and n > self.max_batch:
                    raise PayloadTooLarge(
                        f"input {spec.name!r} has a batch of {n}; this agent accepts at most {self.max_batch} ([api] max_batch). "
                        "Split the request.",
                        kind="too_large", input=spec.name, expected=f"≤ {self.max_batch}", given=str(n),
                    )


#: elements up to which finiteness is summed in Python (see _all_finite)
_SMALL_FINITE = 256


def _all_finite(x: np.ndarray) -> bool:
    """True when no NaN/inf. Small tensors: the values summed as Python floats (a NaN or an inf makes
    the sum NaN or inf; float64 sums of ≤ 256 float32/float16 values cannot overflow): a request to a
    small model pays ~3 µs here where numpy's ufunc and reduction machinery, cold after a model run,
    costs ~12 µs. Large tensors: their largest and smallest value (float32: 14 µs for a 224x224 RGB image, a
    sum took 27 µs), or one numpy sum (float16, whose max/min are slow; float64), no temporary bool array; only
    when the sum is not finite — a NaN, an inf, or an overflow of large float64 values — look at every element."""
    n = x.size
    if n <= _SMALL_FINITE:
        if math.isfinite(sum(x.ravel().tolist())):
            return True
        return bool(np.isfinite(x).all())
    if n <= 4096:  # mid-sized: errstate's own cost would dominate
        return bool(np.isfinite(x).all())
    if x.dtype == np.float32:  # the largest and the smallest value (NaN if any is NaN): half the time of a float32 sum
        return bool(np.isfinite(np.maximum.reduce(x, axis=None)) and np.isfinite(np.minimum.reduce(x, axis=None)))
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.add.reduce(x, axis=None)):
            return True
    return bool(np.isfinite(x).all())


def _narrowed(x: np.ndarray, target: np.dtype[Any]) -> np.ndarray | None:
    """``x`` (floats) as ``target`` floats; None when a finite value overflows it (1e39 as float32).

    A cast that leaves every value finite cannot have overflowed, which the finiteness sum tells for the
    common request in ~1 µs; only a tensor holding infinities after the cast is compared element-wise."""
    if x.dtype.itemsize <= target.itemsize:  # widening (or same size): nothing can overflow
        return x.astype(target)
    with np.errstate(over="ignore"):
        y = x.astype(target)
    if _all_finite(y) or int(np.isinf(y).sum()) == int(np.isinf(x).sum()):
        return y
    return None


def _dims_match(shape: tuple[int, ...], want: tuple[Any, ...]) -> bool:
    return len(shape) == len(want) and all(not isinstance(d, int) or d == n for d, n in zip(want, shape, strict=True))
