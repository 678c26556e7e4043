"""Helpers for the agent tests (``from tests.agent.agent_helpers import ...``).

- ``write_model_dir``: a manifest written by hand around any ONNX model (for layouts, tampering,
  several inputs), using the same manifest helpers as edgekit.
- ``wait_until``: bounded polling.
"""

from __future__ import annotations

import datetime
import io
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from device_agent.contract.manifest import SCHEMA, SCHEMA_VERSION, TensorSpec, encode_tensor, file_sha256
from tests.conftest import wait_until  # noqa: F401 - re-exported for the agent tests


def _spec(v: onnx.ValueInfoProto, layout: str | None = None, perm=None) -> dict:
    tt = v.type.tensor_type
    shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
    return TensorSpec(v.name, helper.tensor_dtype_to_np_dtype(tt.elem_type).name, tuple(shape), layout, perm).to_dict()


def write_model_dir(model: onnx.ModelProto, out: Path, *, name: str = "model", version: str = "1.0.0", task: str = "generic",
                    labels: list[str] | None = None, features: list[dict] | None = None, selftest_inputs: list[dict] | None = None,
                    source_inputs: list[dict] | None = None, perm: tuple[int, ...] | None = None, layouts: tuple[str, str] | None = None,
                    extra: dict | None = None, tolerance: dict | None = None, file: str = "model.onnx") -> Path:
    """Write ``model`` as the only artifact of a manifest directory.

    ``perm``/``layouts`` describe an artifact whose input layout differs from the source layout
    (``source_inputs`` then gives the source-layout signature). Self-test expectations are computed
    with onnxruntime on ``selftest_inputs`` (source layout).
    """
    import onnxruntime as ort

    out.mkdir(parents=True, exist_ok=True)
    path = out / file
    onnx.save(model, path)
    art_inputs = [_spec(v, layouts[1] if layouts else None, perm) for v in model.graph.input]
    outputs = [_spec(v) for v in model.graph.output]
    src_inputs = source_inputs or [_spec(v, layouts[0] if layouts else None) for v in model.graph.input]
    doc = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "name": name, "version": version,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(), "task": task, "labels": labels,
        "signature": {"inputs": src_inputs, "outputs": outputs},
        "artifacts": [{"file": file, "format": "onnx", "precision": "fp32", "size_bytes": path.stat().st_size, "sha256": file_sha256(path),
                       "runtime": "onnxruntime", "inputs": art_inputs, "outputs": outputs, "extra": extra or {}}],
        "drift_profile": {"samples": 100, "features": features or []},
    }
    if selftest_inputs:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        vectors = []
        for vec in selftest_inputs:
            feeds = {k: (np.ascontiguousarray(np.transpose(v, perm)) if perm else v) for k, v in vec.items()}
            res = sess.run(None, feeds)
            vectors.append({"inputs": {k: encode_tensor(v) for k, v in vec.items()},
                            "expected": {file: {o.name: encode_tensor(y) for o, y in zip(sess.get_outputs(), res, strict=True)}}})
        doc["selftest"] = {"vectors": vectors, "tolerance": {file: tolerance or {"atol": 1e-5, "rtol": 1e-4}}}
    (out / "edgekit.json").write_text(json.dumps(doc, indent=2))
    return out


def two_input_model() -> onnx.ModelProto:
    """y[N, 3] = a[N, 3] * b[N, 3] (float32) + Cast(k[N, 3]: int64); shares the symbolic batch N."""
    nodes = [helper.make_node("Mul", ["a", "b"], ["ab"]), helper.make_node("Cast", ["k"], ["kf"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["ab", "kf"], ["y"])]
    g = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3]),
                                         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 3]),
                                         helper.make_tensor_value_info("k", TensorProto.INT64, ["N", 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def nhwc_variant(nchw: onnx.ModelProto) -> onnx.ModelProto:
    """The same network taking NHWC input: a Transpose(0, 3, 1, 2) in front of the NCHW graph."""
    m = onnx.ModelProto()
    m.CopyFrom(nchw)
    g = m.graph
    old = g.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in old.type.tensor_type.shape.dim]
    for node in g.node:
        for i, name in enumerate(node.input):
            if name == old.name:
                node.input[i] = old.name + "_nchw"
    g.node.insert(0, helper.make_node("Transpose", [old.name], [old.name + "_nchw"], perm=[0, 3, 1, 2]))
    new = helper.make_tensor_value_info(old.name, old.type.tensor_type.elem_type, [dims[0], dims[2], dims[3], dims[1]])
    g.input.remove(old)
    g.input.insert(0, new)
    return m


def profile_features(x: np.ndarray, input_name: str, axis: int, bins: int = 4) -> list[dict]:
    """Reference features like edgekit.profile: quantile edges and counts per index along ``axis``."""
    feats = []
    for i in range(x.shape[axis]):
        v = np.take(x, i, axis=axis).reshape(-1).astype(np.float64)
        edges = np.unique(np.quantile(v, np.linspace(0, 1, bins + 1)))
        counts, _ = np.histogram(v, bins=edges)
        feats.append({"input": input_name, "axis": axis, "index": i, "name": f"{input_name}[{i}]", "edges": edges.tolist(),
                      "counts": counts.tolist(), "min": float(v.min()), "max": float(v.max()), "mean": float(v.mean()),
                      "std": float(v.std()), "nan_share": 0.0})
    return feats


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bomb_npz(name: str, shape: tuple[int, ...], dtype: str = "<f4", *, crc: bool = False) -> bytes:
    """An .npz archive whose one member ``name.npy`` inflates to an array of zeros of ``shape`` — a
    decompression bomb (2**28 float32 zeros: 1 GiB in ~1 MB), built without ever holding the zeros.

    Deflate output is repeatable after a full flush, so one compressed megabyte of zeros is repeated;
    the CRC is only computed when ``crc`` (a reader that refuses the sizes never gets that far)."""
    import struct
    import zlib

    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    head = buf.getvalue()
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    mb, rest = divmod(nbytes, 1 << 20)
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    parts = [c.compress(head) + c.flush(zlib.Z_FULL_FLUSH)]
    block = c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
    parts.append(block * (mb - 1) if mb else b"")
    parts.append(c.compress(bytes(rest)) + c.flush(zlib.Z_FINISH))
    data = b"".join(parts)
    size = len(head) + nbytes
    checksum = 0
    if crc:
        checksum = zlib.crc32(head)
        zero = bytes(1 << 20)
        for _ in range(mb):
            checksum = zlib.crc32(zero, checksum)
        checksum = zlib.crc32(bytes(rest), checksum)
    fname = f"{name}.npy".encode()
    local = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 8, 0, 0, checksum, len(data), size, len(fname), 0) + fname
    central = struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, 8, 0, 0, checksum, len(data), size, len(fname), 0, 0, 0, 0, 0, 0) + fname
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 1, 1, len(central), len(local) + len(data), 0)
    return local + data + central + end
