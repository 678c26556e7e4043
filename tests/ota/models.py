"""Model directories for OTA tests and the benchmark: good versions, and versions broken on purpose.

A directory is what `edgekit compress` writes (edgekit.json + artifact), built directly so tests
stay fast: the manifest's self-test vectors are the model's own ORT outputs on seeded inputs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from device_agent.contract.manifest import encode_tensor
from tests.conftest import build_mlp

__all__ = ["inputs", "make_model_dir", "mlp", "nan_mlp", "slow_mlp", "wide_mlp"]

FEATURES, CLASSES = 16, 4


def mlp(seed: int = 0) -> onnx.ModelProto:
    return build_mlp(FEATURES, 64, CLASSES, seed=seed)


def wide_mlp(seed: int = 0) -> onnx.ModelProto:
    """Same signature as :func:`mlp` with 8 inputs instead of 16 features: incompatible."""
    return build_mlp(8, 64, CLASSES, seed=seed)


def nan_mlp(seed: int = 0) -> onnx.ModelProto:
    """logits = Log(mlp(x)): NaN wherever a logit is negative (most live inputs)."""
    m = mlp(seed)
    g = m.graph
    g.node[-1].output[0] = "raw"
    g.node.append(helper.make_node("Log", ["raw"], ["logits"], name="log"))
    onnx.checker.check_model(m)
    return m


def slow_mlp(seed: int = 0, *, tile: int = 32, depth: int = 2, shared: bool = False) -> onnx.ModelProto:
    """Same outputs as ``mlp(seed)`` plus a dead-weight branch: xᵀx tiled to a [16·tile]² matrix and
    ``depth`` square MatMuls on it, multiplied by zero and added. Much slower, numerically identical.
    ``shared``: every MatMul uses one weight matrix, so the cost grows with ``depth`` and not the cache misses."""
    m = mlp(seed)
    g = m.graph
    rng = np.random.default_rng(99)
    w = FEATURES * tile
    g.node[-1].output[0] = "fast"
    g.initializer.append(numpy_helper.from_array(np.array([tile, tile], np.int64), "reps"))
    g.initializer.append(numpy_helper.from_array(np.array([0.0], np.float32), "zero"))
    g.node.append(helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0]))
    g.node.append(helper.make_node("MatMul", ["xt", "x"], ["gram"]))
    g.node.append(helper.make_node("Tile", ["gram", "reps"], ["slow0"]))
    prev = "slow0"
    for i in range(depth):
        if i == 0 or not shared:
            g.initializer.append(numpy_helper.from_array((rng.standard_normal((w, w)) * (0.5 / w)).astype(np.float32), f"wb{i}"))
        g.node.append(helper.make_node("MatMul", [prev, "wb0" if shared else f"wb{i}"], [f"slow{i + 1}"]))
        prev = f"slow{i + 1}"
    g.node.append(helper.make_node("ReduceMean", [prev], ["m"], keepdims=0))
    g.node.append(helper.make_node("Mul", ["m", "zero"], ["z"]))
    g.node.append(helper.make_node("Add", ["fast", "z"], ["logits"]))
    onnx.checker.check_model(m)
    return m


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def make_model_dir(out: str | Path, model: onnx.ModelProto | bytes, *, version: str, name: str = "mlp", vectors: int = 2,
                   metrics: dict | None = None, expected_from: onnx.ModelProto | None = None, in_features: int = FEATURES) -> Path:
    """Write ``out/edgekit.json`` + ``out/<name>.onnx``. ``model`` may be raw bytes (a file that does
    not load). Self-test expectations come from ``expected_from`` (default: the model itself)."""
    import onnxruntime as ort

    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    data = model if isinstance(model, bytes) else model.SerializeToString()
    art = f"{name}.onnx"
    (d / art).write_bytes(data)
    spec_in = [{"name": "x", "dtype": "float32", "shape": ["N", in_features], "layout": None}]
    spec_out = [{"name": "logits", "dtype": "float32", "shape": ["N", CLASSES], "layout": None}]
    selftest: dict = {"vectors": [], "tolerance": {art: {"atol": 1e-4, "rtol": 1e-4}}}
    ref = expected_from if expected_from is not None else (model if not isinstance(model, bytes) else None)
    if vectors and ref is not None:
        sess = ort.InferenceSession(ref.SerializeToString(), providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(7)
        for _ in range(vectors):
            x = np.abs(rng.standard_normal((1, in_features))).astype(np.float32)
            (y,) = sess.run(None, {"x": x})
            selftest["vectors"].append({"inputs": {"x": encode_tensor(x)}, "expected": {art: {"logits": encode_tensor(y)}}})
    doc = {
        "schema": "edgekit.manifest", "schema_version": 1, "name": name, "version": version,
        "created_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source": {"file": art, "sha256": _sha(data), "size_bytes": len(data), "format": "onnx"},
        "task": "classification", "labels": None,
        "signature": {"inputs": spec_in, "outputs": spec_out},
        "artifacts": [{"file": art, "format": "onnx", "precision": "fp32", "size_bytes": len(data), "sha256": _sha(data),
                       "runtime": "onnxruntime", "inputs": spec_in, "outputs": spec_out, "extra": {}}],
        "steps": [], "tools": {}, "data": {},
        "metrics": metrics or {"source": {"accuracy": 90.0, "latency_p50_ms": 0.02}, art: {"accuracy": 90.0, "latency_p50_ms": 0.02}},
        "drift_profile": {"samples": 0, "features": []},
        "selftest": selftest,
    }
    (d / "edgekit.json").write_text(json.dumps(doc, indent=2) + "\n")
    return d


def inputs(n: int = 1, seed: int = 0, features: int = FEATURES) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((n, features)).astype(np.float32)}

