"""Shared for TFLite tests: skip without the tflite extra; models built here (onnx.helper, seeded)."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

NEEDS = ("tensorflow", "onnx2tf", "ai_edge_litert", "tf_keras")

if any(importlib.util.find_spec(m) is None for m in NEEDS):  # pragma: no cover - CI installs [all]
    pytest.skip("the tflite extra is not installed", allow_module_level=True)


def build_image_model(*, batch: int | str = 1, channels: int = 3, size: int = 8, classes: int = 5, seed: int = 0,
                      extra_op: str | None = None) -> onnx.ModelProto:
    """image[B, C, H, W] → Conv 3x3 (8) → Relu → two outputs: features[B, 8, H, W] (NCHW) and logits[B, classes].

    The 4-D output makes the NHWC artifact's output layout matter, not only its input's.
    """
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((8, channels, 3, 3)) / np.sqrt(9 * channels)).astype(np.float32)
    b = (rng.standard_normal(8) * 0.1).astype(np.float32)
    fc = (rng.standard_normal((8, classes)) / np.sqrt(8)).astype(np.float32)
    fb = np.zeros(classes, np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in ((w, "w"), (b, "b"), (fc, "fc"), (fb, "fb"))]
    nodes = [
        helper.make_node("Conv", ["image", "w", "b"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["features"], name="relu"),
        helper.make_node("GlobalAveragePool", ["features"], ["pooled"], name="gap"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc", "fb"], ["logits"], name="fc"),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes]),
               helper.make_tensor_value_info("features", TensorProto.FLOAT, [batch, 8, size, size])]
    if extra_op == "LpPool":
        nodes.append(helper.make_node("LpPool", ["features"], ["lp"], name="lp_pool_1", kernel_shape=[2, 2], p=2))
        outputs.append(helper.make_tensor_value_info("lp", TensorProto.FLOAT, [batch, 8, size - 1, size - 1]))
    graph = helper.make_graph(nodes, "image_net", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, channels, size, size])],
                              outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="edgekit-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def image_data(n: int = 48, *, channels: int = 3, size: int = 8, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((n, channels, size, size)).astype(np.float32)
