"""Shared fixtures: models the tests build themselves (nothing binary is committed).

- ``digits``: a small CNN trained on scikit-learn's digits, exported to ONNX, with train/calib/eval
  .npz files. Trained once and cached under the pytest cache (keyed by the trainer's source).
- ``make_mlp`` / ``mlp_model``: tiny Gemm/Relu classifiers from onnx.helper with a seeded RNG.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def digits(request, tmp_path_factory) -> dict[str, Path]:
    """Paths: model (digits.onnx), weights (digits.pt), train/calib/eval (.npz)."""
    src = (ROOT / "edgekit" / "examples" / "digits.py").read_bytes()
    key = hashlib.sha256(src).hexdigest()[:12]
    cache = Path(request.config.cache.mkdir(f"edgekit-digits-{key}"))
    names = {"model": "digits.onnx", "weights": "digits.pt", "train": "train.npz", "calib": "calib.npz", "eval": "eval.npz"}
    if not all((cache / n).is_file() for n in names.values()):
        from edgekit.examples.digits import train_digits

        tmp = tmp_path_factory.mktemp("digits-train")
        train_digits(tmp)
        for n in names.values():
            shutil.copy(tmp / n, cache / n)
    # hand each session its own copy so tests can write next to the model
    work = tmp_path_factory.mktemp("digits")
    for n in names.values():
        shutil.copy(cache / n, work / n)
    return {k: work / n for k, n in names.items()}


def build_mlp(in_features: int = 16, hidden: int = 64, classes: int = 4, *, seed: int = 0, batch: int | str = "N",
              opset: int = 17, constant_weights: bool = False) -> onnx.ModelProto:
    """x[N, F] -> Gemm -> Relu -> Gemm -> logits[N, C]; weights as initializers or Constant nodes."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((in_features, hidden)) / np.sqrt(in_features)).astype(np.float32)
    b1 = (rng.standard_normal(hidden) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((hidden, classes)) / np.sqrt(hidden)).astype(np.float32)
    b2 = np.zeros(classes, np.float32)
    tensors = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))]
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["hr"], name="relu"),
        helper.make_node("Gemm", ["hr", "w2", "b2"], ["logits"], name="fc2"),
    ]
    inits = tensors
    if constant_weights:
        nodes = [helper.make_node("Constant", [], [t.name], value=t, name=f"const_{t.name}") for t in tensors] + nodes
        inits = []
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, in_features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="edgekit-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def make_mlp():
    return build_mlp


@pytest.fixture
def mlp_model(tmp_path) -> Path:
    p = tmp_path / "mlp.onnx"
    onnx.save(build_mlp(), p)
    return p


@pytest.fixture
def mlp_data(tmp_path) -> Path:
    rng = np.random.default_rng(1)
    p = tmp_path / "mlp_data.npz"
    np.savez(p, x=rng.standard_normal((200, 16)).astype(np.float32))
    return p
