"""JSON in and out of the HTTP API: orjson when installed (an agent dependency), the stdlib otherwise.

orjson parses a 3 MB image tensor ~5x faster than ``json.loads`` and skips the bytes → str copy;
both paths give the same documents and the same errors. Every problem with a body is an
:class:`~device_agent.contract.errors.InvalidInput` (HTTP 400): invalid JSON, nesting deeper than
:data:`MAX_DEPTH` (the stdlib's RecursionError included: never a traceback), and bodies whose
containers would multiply in memory (a body of ``[],[],…`` becomes ~20x its size as Python lists).
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator

import numpy as np

from device_agent.contract.errors import InvalidInput
from device_agent.serve.jsontensor import parse_tensors
from device_agent.serve.optional import optional

__all__ = ["MAX_DEPTH", "dumps", "expanding", "loads"]

#: nesting a body may have: a tensor has at most 64 axes (numpy's limit); orjson stops at 1024
MAX_DEPTH = 1024
#: bodies from this size on are checked for container density before parsing
DENSE_CHECK_BYTES = 256 * 1024
#: at most one list or object per this many bytes in a large body (an image tensor has one per ~4 KB)
BYTES_PER_CONTAINER = 32


#: JSON bodies from this size on are parsed one at a time (see :func:`expanding`)
SERIAL_BYTES = 64 * 1024
_EXPANSION = threading.Lock()


@contextlib.contextmanager
def expanding(size: int) -> Iterator[None]:
    """Hold while a JSON body of ``size`` bytes becomes Python objects and then arrays.

    A 3 MB image tensor becomes ~5 MB of Python floats and lists before numpy packs it into 0.6 MB.
    Parsing holds the GIL, so two parses at once finish no sooner than one after the other; one at
    a time bounds that transient memory to one body's worth, however many requests are in flight."""
    if size < SERIAL_BYTES:
        yield
        return
    with _EXPANSION:
        yield


_orjson = optional("orjson")


def loads(body: bytes | bytearray | memoryview, *, tensors: bool = False) -> object:
    """The JSON document in ``body``; raises InvalidInput (``malformed``) for anything that is not one.

    ``tensors``: a large body's numeric arrays may come back as numpy arrays (int64 or float64, what
    ``np.asarray`` makes of the lists), parsed without a Python float per number
    (:mod:`device_agent.serve.jsontensor`); for bodies that hold tensors, where callers pack lists anyway."""
    if len(body) >= DENSE_CHECK_BYTES:
        containers = _check_density(body)
        if tensors:
            doc = parse_tensors(body, containers)
            if doc is not None:
                return doc
    if _orjson is not None:
        try:
            return _orjson.loads(body)
        except _orjson.JSONDecodeError as e:
            if "depth" in str(e) or "recursion" in str(e).lower():
                raise _too_deep() from None
            # NaN and Infinity are not JSON, but Python's json.dumps writes them: the stdlib reads them
            # (and the validator then says which input holds them) - everything else fails there too
    try:
        return json.loads(bytes(body) if isinstance(body, memoryview) else body)
    except RecursionError:
        raise _too_deep() from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _invalid(str(e)) from None


def _invalid(detail: str) -> InvalidInput:
    return InvalidInput(f"the body is not valid JSON: {detail}", kind="malformed", expected="JSON", given="invalid JSON")


def _too_deep() -> InvalidInput:
    return InvalidInput(f"the body nests lists or objects more than {MAX_DEPTH} levels deep; tensors have at most 64 axes",
                        kind="malformed", expected=f"≤ {MAX_DEPTH} levels", given="deeper")


#: the density check reads a body in slices of this many bytes: its temporaries stay small enough to reuse
#: freed memory (two whole-body temporaries of a 3 MB body were ~1,500 fresh page faults a request)
DENSITY_SLICE = 256 * 1024
_OPENERS = ord("[") | 0x20  # "[" is 0x5B and "{" 0x7B: the only bytes that are 0x7B once bit 5 is set


def _check_density(body: bytes | bytearray | memoryview) -> int:
    """How many ``[`` and ``{`` bytes ``body`` holds; raises InvalidInput when they are too dense."""
    a = np.frombuffer(body, dtype=np.uint8)
    scratch = np.empty(min(len(a), DENSITY_SLICE), np.uint8)
    containers = 0
    for start in range(0, len(a), DENSITY_SLICE):
        part = a[start:start + DENSITY_SLICE]
        folded = np.bitwise_or(part, 0x20, out=scratch[:len(part)])
        containers += int(np.count_nonzero(folded == _OPENERS))
    if containers * BYTES_PER_CONTAINER > len(a):
        raise InvalidInput(f"the body holds {containers:,} lists or objects in {len(a):,} bytes; large bodies may hold at most one per "
                           f"{BYTES_PER_CONTAINER} bytes (a tensor's rows are longer). Send the tensor as .npy, or in fewer, longer rows.",
                           kind="malformed", expected=f"≤ {len(a) // BYTES_PER_CONTAINER:,} lists", given=f"{containers:,}")
    return containers


def dumps(doc: object) -> bytes:
    """``doc`` as compact JSON; numpy arrays and scalars as numbers, NaN and ±inf (not JSON) as null."""
    if _orjson is not None:
        try:
            out: bytes = _orjson.dumps(doc, option=_orjson.OPT_SERIALIZE_NUMPY)
            return out
        except TypeError:  # what orjson does not take (a non-contiguous array) goes the stdlib way
            pass
    try:
        text = json.dumps(doc, separators=(",", ":"), allow_nan=False, default=_default)
    except ValueError:  # NaN/inf: JSON has no such numbers, they become null
        text = json.dumps(_finite(doc), separators=(",", ":"), allow_nan=False, default=_default)
    return text.encode()


def _finite(x: object) -> object:
    if isinstance(x, float):
        return x if np.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, np.ndarray):
        return _finite(x.tolist())
    return x


def _default(o: object) -> object:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serializable")
