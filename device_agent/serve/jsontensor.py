"""Large JSON tensors parsed straight into numpy arrays, without a Python float per number (pysimdjson).

A 224x224 RGB image sent as JSON is ~150,000 numbers in 1.6-3 MB. orjson turns them into 150,000
Python floats in 672 lists (~8 ms here for 3 MB), then numpy packs those into an array (~2 ms): two
thirds of such a request. simdjson parses the same body into its own tape (~4 ms) and copies a nested
numeric array out as one buffer of doubles or 64-bit integers; the array is made from that buffer.

The result is exactly the document orjson gives, except that each numeric array of at least
:data:`TENSOR_ELEMENTS` numbers is the array ``np.asarray`` would make of its lists: int64 when every
number is an integer, float64 otherwise, the same values (both parsers round decimal text to the nearest
double). Anything else — ragged rows, a string or a null among the numbers, integers beyond 64 bits, a
body that is not JSON, a body with many small lists or objects besides its tensors — returns ``None`` and the caller parses the body
the usual way, which also names what is wrong with it. So the errors a client sees are unchanged.

Ragged nesting is the subtle case: simdjson flattens nested arrays when it copies them, so ``[[1, 2, 3],
[4, [5], 6]]`` would flatten to six numbers like a 2x3 tensor. Every row length is compared along the
way, and the count of ``[`` and ``{`` bytes in the whole body (counted anyway, see
:func:`device_agent.serve.jsonbody.loads`) must equal the containers of the document as read: an array
hidden among a row's numbers, or a bracket inside a string, makes them differ and the body takes the
usual path.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from device_agent.serve.optional import optional

__all__ = ["TENSOR_ELEMENTS", "available", "parse_tensors"]

#: numeric arrays from this many numbers on become numpy arrays; smaller ones stay lists
TENSOR_ELEMENTS = 1024
#: keys and list items outside the tensors, walked one by one in Python: a body with more takes the usual way
#: (a table of many small rows, say, which orjson reads faster)
MAX_ITEMS = 16384
#: nesting beyond numpy's axis limit: the usual path names it
MAX_DEPTH = 64


_simdjson = optional("simdjson")


def available() -> bool:
    """Whether pysimdjson is installed (an agent dependency; without it every body takes orjson's path)."""
    return _simdjson is not None


def parse_tensors(body: bytes | bytearray | memoryview, containers: int) -> object | None:
    """The JSON document in ``body`` with its large numeric arrays as numpy arrays, or None (parse it the usual way).

    ``containers``: how many ``[`` and ``{`` bytes the body holds."""
    sj = _simdjson
    if sj is None:
        return None
    try:
        root = sj.Parser().parse(body)  # a parser per body: its buffers go with it, and no proxy outlives its parser
    except Exception:  # ValueError, RuntimeError (big integers) ...: not a document simdjson takes
        return None
    walk = _Walk(sj)
    try:
        doc = walk.convert(root, 0)
    except _Usual:
        return None
    return doc if walk.containers == containers else None


class _Usual(Exception):
    """A body the usual path parses (and names the problem of)."""


class _Walk:
    """One document's conversion: the containers met (tensors' rows included) and the items walked in Python so far."""

    __slots__ = ("containers", "items", "sj")

    def __init__(self, sj: ModuleType) -> None:
        self.sj, self.containers, self.items = sj, 0, 0

    def convert(self, node: Any, depth: int) -> object:
        sj = self.sj
        if depth >= MAX_DEPTH:
            raise _Usual
        if isinstance(node, sj.Object):
            keys = list(node.keys())  # (items() would turn the values into Python objects, tensors included)
            self._walked(len(keys))
            if len(set(keys)) != len(keys):  # a repeated key: orjson keeps the last value, a lookup finds the first
                raise _Usual
            return {k: self.convert(node[k], depth + 1) for k in keys}
        if isinstance(node, sj.Array):
            tensor = self.tensor(node, depth)
            if tensor is not None:
                return tensor
            self._walked(len(node))
            return [self.convert(v, depth + 1) for v in node]
        return node  # str, int, float, bool, None: already Python objects

    def _walked(self, items: int) -> None:
        self.containers += 1
        self.items += items
        if self.items > MAX_ITEMS:
            raise _Usual

    def tensor(self, node: Any, depth: int) -> np.ndarray | None:
        """``node`` as an array when it is a rectangular nest of at least TENSOR_ELEMENTS numbers."""
        sj = self.sj
        shape: list[int] = []
        cur = node
        while isinstance(cur, sj.Array):
            if depth + len(shape) >= MAX_DEPTH:
                raise _Usual
            if not len(cur):  # an empty row: the usual path
                return None
            shape.append(len(cur))
            cur = cur[0]
        if type(cur) not in (int, float):  # bool is not int here: np.asarray makes bool arrays of them
            return None
        count = 1
        for d in shape:
            count *= d
        if count < TENSOR_ELEMENTS:
            return None
        if len(shape) > 1 and not _rectangular(node, shape, 0, sj):
            raise _Usual  # ragged: numpy refuses it, and the usual path says so
        data, dtype = _numbers(node, int_first=type(cur) is int)
        a = np.frombuffer(data, dtype=dtype)
        if a.size != count:  # an array among a row's numbers, flattened into it
            raise _Usual
        above = 1
        for d in shape:
            self.containers += above
            above *= d
        return a.reshape(shape)


def _numbers(node: Any, *, int_first: bool) -> tuple[Any, type[np.generic]]:
    """The numbers under ``node`` as one buffer, and its dtype: int64 when all of them are integers, else float64."""
    if int_first:
        try:
            return node.as_buffer(of_type="i"), np.int64
        except TypeError:  # a float among them: np.asarray would make float64 too
            pass
        except ValueError:  # an integer beyond int64: np.asarray makes uint64 or objects of those, not doubles
            raise _Usual from None
    try:
        return node.as_buffer(of_type="d"), np.float64
    except (TypeError, ValueError):  # a string, a bool, a null or an object among the numbers
        raise _Usual from None


def _rectangular(node: Any, shape: list[int], level: int, sj: ModuleType) -> bool:
    """Every array at every level above the rows has ``shape[level]`` items; rows are arrays of ``shape[-1]``."""
    want = shape[level + 1]
    last = level + 2 == len(shape)
    for child in node:
        if not isinstance(child, sj.Array) or len(child) != want:
            return False
        if not last and not _rectangular(child, shape, level + 1, sj):
            return False
    return True
