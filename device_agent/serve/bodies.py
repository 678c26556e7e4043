"""Reading ``POST /v1/predict`` bodies: JSON, raw ``.npy`` and ``.npz``, and the options they carry.

Every problem is an :class:`~device_agent.contract.errors.InvalidInput` whose message names the
value and the fix; nothing here reaches the runtime. Binary bodies are not copied: a ``.npy``
array is a view of the request's own buffer, and ``.npz`` members are inflated straight into
preallocated arrays after their sizes were checked (:mod:`device_agent.serve.npz`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypedDict

import numpy as np

from device_agent.contract.errors import InvalidInput
from device_agent.contract.types import Array
from device_agent.serve.exchange import REQUEST_ID
from device_agent.serve.images import IMAGE_TYPES, decode_image, raw_image_input
from device_agent.serve.jsonbody import expanding, loads
from device_agent.serve.npz import load_npz, save_npz
from device_agent.serve.predictor import Predictor
from device_agent.serve.rows import Instances

__all__ = ["NPY", "NPZ", "REQUEST_ID", "PredictOptions", "int_option", "load_npy", "npz_bytes", "parse_predict"]

NPY = "application/x-npy"
NPZ = "application/x-npz"


def npz_bytes(outputs: Mapping[str, Array]) -> bytes:
    """Outputs as an ``.npz``; strings (a pipeline's class labels) as fixed-width unicode, which np.load reads without pickle."""
    return save_npz({k: v.astype(str) if v.dtype == object else v for k, v in outputs.items()})


class PredictOptions(TypedDict, total=False):
    top_k: int
    request_id: str


def parse_predict(body: bytes | bytearray, ctype: str, query: Mapping[str, list[str]], predictor: Predictor, *,
                  max_body_bytes: int = 16 << 20) -> tuple[Mapping[str, object], PredictOptions]:
    """The inputs and options of a ``POST /v1/predict`` body of content type ``ctype`` (lower case, no parameters).

    A raw .npy body is the model's only input, or ``?input=NAME``; errors describe the signature.
    An .npz body may inflate to at most ``max_body_bytes`` (what the same arrays may take raw).
    """
    options: PredictOptions = {}
    if "top_k" in query:
        options["top_k"] = int_option(query["top_k"][0], "top_k")
    if ctype == "application/x-www-form-urlencoded" and body[:1] == b"{":
        ctype = "application/json"  # `curl -d '{...}'` without -H content-type: it is JSON all the same
    if ctype == "application/json":
        return _json_inputs(body, options, predictor)
    if ctype in (NPY, "application/octet-stream"):
        name = query.get("input", [None])[0]
        if name is None:
            input_names = [s.name for s in predictor.model.inputs]
            if len(input_names) != 1:
                raise InvalidInput(f"a raw .npy body carries one input; this model has {len(input_names)} ({', '.join(input_names)}): "
                                   "add ?input=NAME or send application/x-npz", kind="malformed")
            name = input_names[0]
        return {name: load_npy(body)}, options
    if ctype in (NPZ, "application/zip"):
        return load_npz(body, max_elements=predictor.max_elements, max_bytes=max_body_bytes), options
    if ctype in IMAGE_TYPES:
        spec = raw_image_input(predictor.model.inputs)
        if spec is None:
            raise InvalidInput(f"{ctype} bodies are for models that take raw images (uint8 [N, H, W, 3], compressed with --preprocess); "
                               f"this model takes {predictor.signature_text()}: send application/json, {NPY} or {NPZ}", kind="content_type")
        manifest = predictor.model.manifest
        pre = ((manifest.raw.get("preprocessing") or {}).get("spec") or {}) if manifest is not None else {}
        short = pre.get("resize_short")
        return {spec.name: decode_image(body, ctype, spec, max_elements=predictor.max_elements,
                                        resize_short=short if isinstance(short, int) else None)}, options
    images = ", image/jpeg, image/png" if raw_image_input(predictor.model.inputs) is not None else ""
    raise InvalidInput(f"Content-Type {ctype!r} is not supported; use application/json, {NPY} or {NPZ}{images}", kind="content_type")


def _json_inputs(body: bytes | bytearray, options: PredictOptions, predictor: Predictor) -> tuple[Mapping[str, object], PredictOptions]:
    manifest = predictor.model.manifest
    fields = manifest.fields if manifest is not None else ()
    with expanding(len(body)):
        doc = loads(body, tensors=not fields)  # a table's rows: many small objects, which orjson reads faster
        if not fields and isinstance(doc, dict) and isinstance(doc.get("inputs"), dict):
            doc["inputs"] = {k: _packed(v) for k, v in doc["inputs"].items()}  # the lists go while the lock is held
    if fields and isinstance(doc, dict) and "instances" in doc and "inputs" not in doc:
        doc["inputs"] = Instances(doc.pop("instances"))  # made columns by the validator, which names a bad row
    if not isinstance(doc, dict) or "inputs" not in doc:
        shape = ('"instances": [{"<field>": value, ...}, ...] or "inputs": {"<field>": [values]}' if fields
                 else '"inputs": {"<input name>": [...]}')
        raise InvalidInput(
            f"the JSON body must be an object with {shape}; the model takes: " + predictor.signature_text(),
            kind="malformed", expected='{"instances": [...]}' if fields else '{"inputs": {...}}',
            given=type(doc).__name__ if not isinstance(doc, dict) else "no 'inputs' key",
        )
    unknown = set(doc) - {"inputs", "top_k", "request_id"}
    if unknown:
        allowed = "instances or inputs, top_k, request_id" if fields else "inputs, top_k, request_id"
        raise InvalidInput(f"unknown key(s) in the body: {', '.join(sorted(unknown))}; allowed: {allowed}",
                           kind="malformed", given=", ".join(sorted(unknown)))
    if "top_k" in doc:
        options["top_k"] = int_option(doc["top_k"], "top_k")
    if "request_id" in doc:
        if not isinstance(doc["request_id"], str) or not REQUEST_ID.fullmatch(doc["request_id"]):
            raise InvalidInput("request_id must be 1 to 128 visible ASCII characters (no spaces or control characters)",
                               kind="malformed")
        options["request_id"] = doc["request_id"]
    inputs: Mapping[str, object] = doc["inputs"]  # not checked here: the validator says what is wrong with it
    return inputs, options


def _packed(value: object) -> object:
    """A JSON tensor as the array ``np.asarray`` makes of it; anything it cannot pack stays as it is, for the
    validator to name what is wrong (a ragged list, strings, nulls)."""
    if not isinstance(value, list):
        return value
    try:
        a = np.asarray(value)
    except (ValueError, TypeError, RecursionError):
        return value
    return value if a.dtype == object or a.dtype.kind in "USV" else a


def int_option(value: object, name: str) -> int:
    """A request option that must be an integer from 0 to 1000 (``top_k``), from JSON or the query string."""
    try:
        v: int = int(value)  # type: ignore[call-overload]  # str, int and float convert; anything else raises TypeError
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()) or v < 0 or v > 1000:
            raise ValueError
        return v
    except (TypeError, ValueError, OverflowError):
        raise InvalidInput(f"{name} must be an integer between 0 and 1000, got {value!r}", kind="malformed") from None


def load_npy(body: bytes | bytearray | memoryview) -> Array:
    """A .npy body as an array over the request's own bytes (no copy). Object arrays (pickles) are refused."""
    try:
        view = memoryview(body)
        shape, fortran, dtype, offset = _npy_header(view)
        count = 1
        for d in shape:
            count *= int(d)
        if len(view) - offset != count * dtype.itemsize:
            raise ValueError(f"{len(view) - offset} data bytes for shape {list(shape)} {dtype}")
        a = np.frombuffer(view, dtype=dtype, count=count, offset=offset)
        return a.reshape(shape, order="F" if fortran else "C")
    except Exception as e:
        raise InvalidInput(f"the body is not a readable .npy array: {e}", kind="malformed") from None


#: parsed .npy headers by their bytes: a client sends the same header with every request, and numpy
#: parses one with ast.literal_eval (~15 µs). Bounded: 256 headers of at most 256 bytes (numpy writes 128).
_HEADERS: dict[bytes, tuple[tuple[int, ...], bool, np.dtype[np.generic], int]] = {}
_HEADERS_MAX = 256
_HEADER_BYTES = 256


def _npy_header(view: memoryview) -> tuple[tuple[int, ...], bool, np.dtype[np.generic], int]:
    if len(view) >= 10 and view[6] == 1:  # version 1.0: a 2-byte header length after the 8-byte magic
        end = 10 + int.from_bytes(view[8:10], "little")
        key = bytes(view[:end])
        cached = _HEADERS.get(key)
        if cached is not None:
            return cached
    reader = _Reader(view)
    version = np.lib.format.read_magic(reader)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(reader)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(reader)
    if dtype.hasobject:
        raise ValueError("object arrays are not accepted")
    parsed = (tuple(int(d) for d in shape), bool(fortran), dtype, reader.pos)
    if version == (1, 0) and reader.pos <= _HEADER_BYTES:
        if len(_HEADERS) >= _HEADERS_MAX:
            _HEADERS.clear()
        _HEADERS[bytes(view[:reader.pos])] = parsed
    return parsed


class _Reader:
    """Just enough of a file over a buffer for numpy's header readers (io.BytesIO would copy the body)."""

    def __init__(self, view: memoryview) -> None:
        self.view = view
        self.pos = 0

    def read(self, n: int = -1, /) -> bytes:
        if n < 0:
            n = len(self.view) - self.pos
        out = bytes(self.view[self.pos:self.pos + n])
        self.pos += len(out)
        return out
