"""A model whose work is mostly MatMuls (a transformer, ConvNeXt) gets dynamic int8 of them tried before the per-layer search.

Seen on torchvision's ConvNeXt-T: without data edgekit shipped dynamic-linear-only (0.47x fp32); with data the per-layer
search spent the budget first, dynamic-linear-only was skipped, and a slower static model shipped (0.62x)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from edgekit.cli.main import cli
from edgekit.quantize import search
from edgekit.quantize.candidates import LINEAR_FIRST, candidates_for, linear_share


def _patches_then_mlp_blocks(path=None) -> onnx.ModelProto:
    """A tiny ViT-like model: a 4x4 patch-embedding conv on a 16x16 image, two residual MLP blocks over the 16 tokens, mean-pooled
    into a classifier."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((32, 3, 4, 4)) * 0.2).astype(np.float32), "patch.w"),
             numpy_helper.from_array(np.array([0, 32, 16], np.int64), "tokens.shape"),
             numpy_helper.from_array((rng.standard_normal((32, 10)) * 0.2).astype(np.float32), "head.w"),
             numpy_helper.from_array(np.zeros(10, np.float32), "head.b")]
    nodes = [helper.make_node("Conv", ["x", "patch.w"], ["p"], name="patch", strides=[4, 4]),
             helper.make_node("Reshape", ["p", "tokens.shape"], ["pt"], name="flatten"),
             helper.make_node("Transpose", ["pt"], ["t0"], name="tokens", perm=[0, 2, 1])]
    t = "t0"
    for b in range(2):
        inits += [numpy_helper.from_array((rng.standard_normal((32, 128)) / np.sqrt(32)).astype(np.float32), f"b{b}.up"),
                  numpy_helper.from_array((rng.standard_normal((128, 32)) / np.sqrt(128)).astype(np.float32), f"b{b}.down")]
        nodes += [helper.make_node("MatMul", [t, f"b{b}.up"], [f"b{b}.h"], name=f"b{b}/up"),
                  helper.make_node("Relu", [f"b{b}.h"], [f"b{b}.r"], name=f"b{b}/relu"),
                  helper.make_node("MatMul", [f"b{b}.r", f"b{b}.down"], [f"b{b}.d"], name=f"b{b}/down"),
                  helper.make_node("Add", [t, f"b{b}.d"], [f"t{b + 1}"], name=f"b{b}/residual")]
        t = f"t{b + 1}"
    nodes += [helper.make_node("ReduceMean", [t], ["pooled"], name="pool", axes=[1], keepdims=0),
              helper.make_node("Gemm", ["pooled", "head.w", "head.b"], ["logits"], name="head")]
    graph = helper.make_graph(nodes, "vit", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    if path is not None:
        onnx.save(model, path)
    return model


def _cnn_with_a_large_classifier() -> onnx.ModelProto:
    """Two 3x3 convs on a 32x32 map, then a classifier holding most of the weights but applied once."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array((rng.standard_normal((16, 3, 3, 3)) * 0.2).astype(np.float32), "c1.w"),
             numpy_helper.from_array((rng.standard_normal((32, 16, 3, 3)) * 0.1).astype(np.float32), "c2.w"),
             numpy_helper.from_array((rng.standard_normal((32, 1000)) * 0.1).astype(np.float32), "fc.w")]
    nodes = [helper.make_node("Conv", ["x", "c1.w"], ["a"], name="c1", pads=[1] * 4),
             helper.make_node("Conv", ["a", "c2.w"], ["b"], name="c2", pads=[1] * 4),
             helper.make_node("GlobalAveragePool", ["b"], ["g"], name="gap"), helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "fc.w"], ["logits"], name="fc")]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_the_share_of_multiply_adds_not_of_weights_decides_what_is_tried_first():
    vit = onnx.shape_inference.infer_shapes(_patches_then_mlp_blocks())
    cnn = onnx.shape_inference.infer_shapes(_cnn_with_a_large_classifier())
    # 16 tokens x 16,384 MatMul weights against 16 patches x 1,536 conv weights; 32,000 classifier weights applied once
    # against 14,256 conv weights applied at 1,024 pixels each
    assert linear_share(vit) == pytest.approx(16 * 16384 / (16 * 16384 + 16 * 1536), rel=0.01) and linear_share(vit) >= LINEAR_FIRST
    assert linear_share(cnn) < 0.01
    first = [c.name for c in candidates_for(vit, has_data=True)]
    assert first[:5] == ["static-qdq-u8s8-perchannel", "static-qop-u8s8-perchannel", "static-qdq-u8s8-pertensor",
                         "dynamic-linear-only", "weight-only"]
    assert [c.name for c in candidates_for(vit, has_data=True) if c.early] == ["dynamic-linear-only"]
    assert not any(c.early for c in candidates_for(cnn, has_data=True))
    assert not any(c.early for c in candidates_for(vit, has_data=False))  # without data nothing precedes it anyway


def test_the_per_layer_search_spending_the_budget_no_longer_skips_dynamic_int8_of_the_matmuls(tmp_path, monkeypatch):
    _patches_then_mlp_blocks(tmp_path / "vit.onnx")
    np.savez(tmp_path / "data.npz", x=np.random.default_rng(2).standard_normal((48, 3, 16, 16)).astype(np.float32))
    spent: list[bool] = []
    real_elapsed = search.Workbench.elapsed

    def per_layer_search_that_takes_all_the_time(bench, first_static):
        spent.append(True)
        return [], {"note": "stand-in: the budget is gone"}

    monkeypatch.setattr("edgekit.quantize.mixed_search.mixed_candidates", per_layer_search_that_takes_all_the_time)
    monkeypatch.setattr(search.Workbench, "elapsed", lambda self: 1e6 if spent else real_elapsed(self))
    res = CliRunner().invoke(cli, ["compress", "--int8", "--data", str(tmp_path / "data.npz"), "--max-drop", "100", "--format", "onnx",
                                   "-o", str(tmp_path / "out"), str(tmp_path / "vit.onnx")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    found = json.loads((tmp_path / "out" / "report.json").read_text())["steps"][0]["result"]["search"]["candidates"]
    status = {c["name"]: (c["status"], c.get("reason") or "") for c in found}
    assert spent and status["dynamic-linear-only"][0] == "ok"  # built before the per-layer search began
    assert status["static-qdq-s8s8-perchannel"] == ("skipped", "search time budget of 180 s spent")  # after it: the budget's
