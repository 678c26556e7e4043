"""Open Inference Protocol V2 tensors on the wire: inference requests in, responses out (JSON and binary).

The binary tensor data extension (Triton's ``binary_tensor_data``): a request whose
``Inference-Header-Content-Length`` header is N carries its JSON in the first N bytes and, after
it, the raw little-endian bytes of every input whose ``parameters.binary_data_size`` says so, in
the order the inputs are listed. Binary inputs become arrays over the request's own buffer (no
copy); JSON ``data`` (flat or nested, row-major) becomes an array once. Outputs go back the same
way when asked (``binary_data`` per output, or ``binary_data_output`` for all).

A request's ``datatype`` must be the model input's (as Triton requires); values are then checked
by the agent's validator like any other request (shape, safe casts, finite values, limits).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from device_agent.contract.errors import InvalidInput
from device_agent.contract.manifest import TensorSpec
from device_agent.contract.types import Array, Feeds, JsonDict
from device_agent.serve.exchange import REQUEST_ID
from device_agent.serve.jsonbody import dumps, expanding, loads

__all__ = ["DATATYPES", "InferRequest", "datatype_of", "encode_response", "parse_infer"]

#: V2 datatype → numpy dtype (BYTES, strings, is not a tensor type the agent's models take)
DATATYPES = {"BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64", "INT8": "int8",
             "INT16": "int16", "INT32": "int32", "INT64": "int64", "FP16": "float16", "FP32": "float32", "FP64": "float64"}
_V2_OF = {np.dtype(v): k for k, v in DATATYPES.items()}
MAX_RANK = 64


def datatype_of(dtype: str | np.dtype[np.generic]) -> str:
    """The V2 datatype of a numpy dtype (name); strings (a table's categorical columns, class labels) are BYTES."""
    if isinstance(dtype, str) and dtype == "string":
        return "BYTES"
    return _V2_OF.get(np.dtype(dtype), "BYTES")


@dataclass
class InferRequest:
    """A parsed inference request: its id, the input arrays, and which outputs to return how."""

    id: str | None
    inputs: dict[str, Array]
    outputs: list[tuple[str, bool]] | None = None  # (name, as binary); None: all outputs
    binary_output: bool = False
    parameters: JsonDict = field(default_factory=dict)


def parse_infer(body: bytes | bytearray | memoryview, header_length: str | None, inputs: tuple[TensorSpec, ...],
                outputs: tuple[TensorSpec, ...]) -> InferRequest:
    """The inference request in ``body`` (JSON, or JSON + binary tensors when ``header_length`` is given)."""
    view = memoryview(body)
    n = len(view)
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(view):
            raise _bad(f"Inference-Header-Content-Length {header_length!r} must be a byte count ≤ the body's {len(view)} bytes")
        n = int(header_length)
    with expanding(n):  # the JSON's lists become arrays before the next large body is parsed
        return _parse(loads(view[:n], tensors=True), view, n, inputs, outputs)


def _parse(doc: object, view: memoryview, n: int, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]) -> InferRequest:
    if not isinstance(doc, dict):
        raise _bad(f'the inference request must be a JSON object {{"inputs": [...]}}, got {type(doc).__name__}')
    rid = doc.get("id")
    if rid is not None and (not isinstance(rid, str) or not REQUEST_ID.fullmatch(rid)):
        raise _bad(f"id must be 1 to 128 visible ASCII characters (no spaces or control characters), got {rid!r:.60}")
    params = _parameters(doc.get("parameters"), "the request's parameters")
    specs = {s.name: s for s in inputs}
    items = doc.get("inputs")
    if not isinstance(items, list) or not items:
        raise _bad('"inputs" must be a non-empty list of {"name", "shape", "datatype", "data"}; the model takes: '
                   + ", ".join(f"{s.name} ({datatype_of(s.dtype)} {_dims(s)})" for s in inputs))
    arrays: dict[str, Array] = {}
    offset = n
    for item in items:
        name, array, offset = _input(item, specs, view, offset)
        if name in arrays:
            raise _bad(f"input {name!r} is given twice")
        arrays[name] = array
    if offset != len(view):
        raise _bad(f"the body has {len(view) - offset} bytes after the binary tensors the inputs declare (binary_data_size)")
    return InferRequest(rid, arrays, _outputs(doc.get("outputs"), outputs), _flag(params, "binary_data_output"), params)


def _input(item: object, specs: Mapping[str, TensorSpec], view: memoryview, offset: int) -> tuple[str, Array, int]:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise _bad('every input is an object {"name", "shape", "datatype", "data" or parameters.binary_data_size}')
    name = item["name"]
    spec = specs.get(name)
    if spec is None:
        raise InvalidInput(f"unknown input {name!r}; the model takes: {', '.join(specs)}", kind="unknown_input", input=name,
                           expected=", ".join(specs), given=name)
    shape = item.get("shape")
    if not isinstance(shape, list) or len(shape) > MAX_RANK or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise _bad(f"input {name!r}: shape must be a list of at most {MAX_RANK} non-negative integers, got {shape!r:.80}", name)
    want = datatype_of(spec.dtype)
    if item.get("datatype") != want:
        raise InvalidInput(f"input {name!r} has datatype {item.get('datatype')!r}; the model takes {want}: send {want} data",
                           kind="dtype", input=name, expected=want, given=str(item.get("datatype")))
    count = 1
    for d in shape:
        count *= d
    size = _parameters(item.get("parameters"), f"input {name!r}'s parameters").get("binary_data_size")
    if size is not None:
        if "data" in item:
            raise _bad(f"input {name!r} has both data and parameters.binary_data_size; send one", name)
        return name, _binary(name, view, offset, size, shape, count, np.dtype(spec.dtype).newbyteorder("<")), offset + size
    if "data" not in item:
        raise _bad(f"input {name!r} has no data (and no parameters.binary_data_size)", name)
    return name, _json_tensor(name, item["data"], shape, count), offset


def _binary(name: str, view: memoryview, offset: int, size: object, shape: list[int], count: int, dtype: np.dtype[np.generic]) -> Array:
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _bad(f"input {name!r}: binary_data_size must be a non-negative integer, got {size!r}", name)
    if offset + size > len(view):
        raise _bad(f"input {name!r} declares {size} binary bytes but the body holds {len(view) - offset} after the JSON and earlier inputs", name)
    if size != count * dtype.itemsize:
        raise InvalidInput(f"input {name!r}: shape {shape} of {DATATYPES[datatype_of(dtype)]} needs {count * dtype.itemsize} bytes; "
                           f"binary_data_size is {size}", kind="shape", input=name, expected=str(count * dtype.itemsize), given=str(size))
    if dtype.kind == "b":
        raw = np.frombuffer(view, dtype=np.uint8, count=count, offset=offset)
        if count and int(raw.max()) > 1:
            raise InvalidInput(f"input {name!r}: BOOL bytes must be 0 or 1", kind="dtype", input=name, expected="0 or 1", given="other bytes")
        return raw.view(np.bool_).reshape(shape)
    return np.frombuffer(view, dtype=dtype, count=count, offset=offset).reshape(shape)


def _json_tensor(name: str, data: object, shape: list[int], count: int) -> Array:
    if not isinstance(data, (list, np.ndarray)) and shape:  # an array: a large numeric list, parsed as one (jsonbody.loads)
        raise _bad(f"input {name!r}: data must be a list of {count} values (flat or nested, row-major), got {type(data).__name__}", name)
    try:
        a = np.asarray(data)
    except (ValueError, TypeError):  # ragged nesting, or deeper than numpy's 64 axes
        raise _bad(f"input {name!r}: data must be a list of numbers, flat or nested with rows of one length", name) from None
    if a.dtype == object or a.dtype.kind in "USV":
        raise InvalidInput(f"input {name!r} holds non-numeric values (strings, nulls or mixed types)", kind="dtype", input=name,
                           expected="numbers", given="non-numeric")
    if a.size != count:
        raise InvalidInput(f"input {name!r} has {a.size} values; shape {shape} needs {count}", kind="shape", input=name,
                           expected=str(shape), given=f"{a.size} values")
    return a.reshape(shape)


def _outputs(value: object, specs: tuple[TensorSpec, ...]) -> list[tuple[str, bool]] | None:
    if value is None:
        return None
    names = [s.name for s in specs]
    if not isinstance(value, list):
        raise _bad(f'"outputs" must be a list of {{"name", "parameters"?}}; the model gives: {", ".join(names)}')
    out: list[tuple[str, bool]] = []
    for item in value:
        name = item.get("name") if isinstance(item, dict) else None
        if name not in names:
            raise _bad(f"unknown output {name!r}; the model gives: {', '.join(names)}")
        params = _parameters(item.get("parameters"), f"output {name!r}'s parameters")
        if params.get("classification"):
            raise _bad(f"output {name!r}: the classification extension is not supported; ask POST /v1/predict for top_k labels")
        if any(n == name for n, _ in out):
            raise _bad(f"output {name!r} is requested twice")
        out.append((str(name), _flag(params, "binary_data")))
    return out


def _parameters(value: object, where: str) -> JsonDict:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, (str, int, float, bool)) for v in value.values()):
        raise _bad(f"{where} must be an object of strings, numbers and booleans")
    return value


def _flag(params: JsonDict, key: str) -> bool:
    v = params.get(key, False)
    if not isinstance(v, bool):
        raise _bad(f"parameter {key} must be true or false, got {v!r}")
    return v


def _dims(spec: TensorSpec) -> list[int]:
    return [d if isinstance(d, int) and d >= 0 else -1 for d in spec.shape]


def _bad(message: str, name: str | None = None) -> InvalidInput:
    return InvalidInput(message, kind="malformed", input=name)


def encode_response(outputs: Feeds, request: InferRequest, header: JsonDict) -> tuple[bytes, int | None]:
    """The response body and, when some outputs go as binary, the length of its JSON part."""
    wanted = request.outputs or [(name, request.binary_output) for name in outputs]
    entries, chunks = [], []
    for name, binary in wanted:
        a = np.ascontiguousarray(outputs[name])
        entry: JsonDict = {"name": name, "datatype": datatype_of(a.dtype), "shape": list(a.shape)}
        if binary:
            data = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            entry["data"] = a.reshape(-1)
        entries.append(entry)
    head = dumps({**header, "outputs": entries})
    if not chunks:
        return head, None
    return b"".join([head, *chunks]), len(head)
