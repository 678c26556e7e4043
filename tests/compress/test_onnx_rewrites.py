"""The space-to-depth stem rewrite: a stride-2 conv on few channels becomes a stride-1 conv on 2x2 pixel blocks.

Checked with onnxruntime on models built here (same outputs to float rounding, every kernel size
and padding an image stem uses), what it leaves alone, and through the int8 step (static ONNX
candidates); tests/tflite/test_tflite_prep.py takes it through the int8 .tflite.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from device_agent.contract.manifest import load_manifest
from edgekit.compress import CompressOptions, compress
from edgekit.onnx_rewrites import space_to_depth_stem
from edgekit.pipeline import StepSpec


def conv_model(*, c: int = 3, size: int = 16, k: int = 7, pads=(3, 3, 3, 3), strides=(2, 2), group: int = 1, bias: bool = True,
                head: bool = False, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    out_c = 8
    w = rng.standard_normal((out_c, c // group, k, k)).astype(np.float32) / k
    inits = [numpy_helper.from_array(w, "w")]
    ins = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(out_c).astype(np.float32), "b"))
        ins.append("b")
    nodes = [helper.make_node("Conv", ins, ["y" if not head else "h"], name="stem", kernel_shape=[k, k], pads=list(pads),
                              strides=list(strides), group=group)]
    oh = (size + pads[0] + pads[2] - k) // strides[0] + 1
    ow = (size + pads[1] + pads[3] - k) // strides[1] + 1
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", out_c, oh, ow])]
    if head:  # a classifier, for the int8 .tflite: Relu → global pool → dense
        inits.append(numpy_helper.from_array(rng.standard_normal((out_c, 5)).astype(np.float32) / 3, "fc"))
        nodes += [helper.make_node("Relu", ["h"], ["r"], name="relu"), helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
                  helper.make_node("Flatten", ["p"], ["f"], name="flat"), helper.make_node("MatMul", ["f", "fc"], ["y"], name="fc")]
        outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])]
    graph = helper.make_graph(nodes, "stem", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, size, size])],
                              outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgekit-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize(("k", "pads", "size", "bias"), [
    (7, (3, 3, 3, 3), 16, True),   # ResNet's stem
    (3, (1, 1, 1, 1), 16, True),   # MobileNet's
    (3, (0, 0, 0, 0), 16, False),  # no padding: the last block row/column reaches past the image
    (5, (2, 2, 2, 2), 12, True),
    (3, (1, 0, 0, 1), 14, True),   # asymmetric
    (4, (1, 2, 2, 1), 16, True),   # even kernel, odd and even padding
])
def test_the_rewrite_computes_the_same_conv(k, pads, size, bias):
    model = conv_model(k=k, pads=pads, size=size, bias=bias)
    rewritten, n = space_to_depth_stem(model)
    assert n == 1
    ops = [node.op_type for node in rewritten.graph.node]
    assert ops == ["SpaceToDepth", "Conv"]
    conv = rewritten.graph.node[1]
    attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    assert attrs["strides"] == [1, 1] and attrs["kernel_shape"] == [(k + pads[0] % 2 - 1) // 2 + 1, (k + pads[1] % 2 - 1) // 2 + 1]
    assert {t.name for t in rewritten.graph.initializer} == {"stem_s2d_weight", *(["b"] if bias else [])}  # the old weight is gone
    onnx.checker.check_model(rewritten)
    x = np.random.default_rng(1).standard_normal((3, 3, size, size)).astype(np.float32)
    want, got = _run(model, x), _run(rewritten, x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs", [
    {"strides": (1, 1), "pads": (3, 3, 3, 3)},  # stride 1: nothing to gain
    {"c": 8},                                    # enough channels already
    {"c": 4, "group": 4},                        # depthwise
    {"size": 15},                                # odd size: 2x2 blocks do not tile it
])
def test_convs_it_cannot_or_need_not_rewrite_are_left_alone(kwargs):
    model = conv_model(**kwargs)
    rewritten, n = space_to_depth_stem(model)
    assert n == 0 and rewritten is model


def test_static_int8_candidates_quantize_the_rewritten_stem_and_the_choice_records_it(tmp_path):
    path = tmp_path / "stem.onnx"
    onnx.save(conv_model(size=32, head=True), str(path))
    np.savez(tmp_path / "data.npz", x=np.random.default_rng(2).random((64, 3, 32, 32)).astype(np.float32))
    res = compress(path, tmp_path / "data.npz", CompressOptions(steps=[StepSpec("int8", {})], formats=("onnx",), output=tmp_path / "out"))
    search = res.steps[0]["result"]["search"]
    assert search["static_rewrites"] == {"space_to_depth_stem": 1}
    art = onnx.load(str(res.output / "stem.int8.onnx"))
    ops = {n.op_type for n in art.graph.node}
    static = search["chosen"].startswith("static")
    assert ("SpaceToDepth" in ops) == static  # dynamic / weight-only candidates keep the original float graph
    assert load_manifest(res.output).metrics["stem.int8.onnx"]["drop_pts"] <= 1.0


def test_an_excluded_stem_is_not_rewritten():
    model = conv_model()
    assert space_to_depth_stem(model, skip=("stem",)) == (model, 0)


def ceil_pool_model(size: int = 12, *, head: bool = False) -> onnx.ModelProto:
    """MTCNN ONet's front, as facenet-pytorch exports it: Conv → PRelu → MaxPool(3, 2, ceil_mode=True) (+ a small head)."""
    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) / 3).astype(np.float32), "w"),
             numpy_helper.from_array(np.full((8, 1, 1), 0.25, np.float32), "slope")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv1"), helper.make_node("PRelu", ["c"] + ["slope"], ["a"], name="prelu1"),
             helper.make_node("MaxPool", ["a"], ["p"], name="pool1", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)]
    pooled = -(-(size - 2 - 3) // 2) + 1
    out = helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 8, pooled, pooled])
    if head:
        inits.append(numpy_helper.from_array((rng.standard_normal((8, 2)) / 3).astype(np.float32), "fc"))
        nodes += [helper.make_node("GlobalMaxPool", ["p"], ["g"], name="gmp"), helper.make_node("Flatten", ["g"], ["f"], name="flat"),
                  helper.make_node("MatMul", ["f", "fc"], ["prob"], name="fc")]
        out = helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 2])
    g = helper.make_graph(nodes, "onet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])], [out], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("size", [12, 13])  # 10 and 11 rows into the pool: a last window past the input, and none
def test_a_ceil_mode_maxpool_becomes_an_edge_pad_and_computes_the_same(size):
    from edgekit.onnx_rewrites import ceil_mode_maxpool

    model = ceil_pool_model(size)
    rewritten, n = ceil_mode_maxpool(model)
    assert n == 1
    ops = [node.op_type for node in rewritten.graph.node]
    assert ops == (["Conv", "PRelu", "Pad", "MaxPool"] if size == 12 else ["Conv", "PRelu", "MaxPool"])
    pool = next(node for node in rewritten.graph.node if node.op_type == "MaxPool")
    assert "ceil_mode" not in {a.name for a in pool.attribute}
    x = -np.abs(np.random.default_rng(0).standard_normal((2, 3, size, size))).astype(np.float32)  # negative: a 0 pad would show
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    got = ort.InferenceSession(rewritten.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, want)
    assert ceil_mode_maxpool(rewritten) == (rewritten, 0)
