"""ONNX artifacts are stored compactly: smaller files, the same outputs, names kept aside in the manifest."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from device_agent.contract.manifest import load_manifest
from edgekit.cli.main import cli
from edgekit.export.compact import NAMES_KEY, compact, restore_names
from tests.conftest import build_mlp


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _with_if_branch() -> onnx.ModelProto:
    """x -> Gemm(w) -> h; If(cond) reads h and w from the outer graph; logits out."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "outer_weight_with_a_long_name")
    then_g = helper.make_graph([helper.make_node("Relu", ["hidden_activation_long_name"], ["then_out"])], "then", [],
                               [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, None)])
    else_g = helper.make_graph([helper.make_node("MatMul", ["x", "outer_weight_with_a_long_name"], ["else_out"])], "else", [],
                               [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, None)])
    nodes = [
        helper.make_node("MatMul", ["x", "outer_weight_with_a_long_name"], ["hidden_activation_long_name"], name="/layer/MatMul"),
        helper.make_node("ReduceSum", ["x"], ["sum_of_inputs_long_name"], name="/cond/ReduceSum", keepdims=0),
        helper.make_node("Greater", ["sum_of_inputs_long_name", "zero_threshold_long_name"], ["cond_long_name"], name="/cond/Greater"),
        helper.make_node("If", ["cond_long_name"], ["branch_out_long_name"], name="/branch/If", then_branch=then_g, else_branch=else_g),
        helper.make_node("Sigmoid", ["branch_out_long_name"], ["logits"], name="/head/Sigmoid", doc_string="a stack trace " * 20),
    ]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])],
                          [w, numpy_helper.from_array(np.array(0.0, np.float32), "zero_threshold_long_name")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft.nchwc", 1)])
    return onnx.shape_inference.infer_shapes(m)


def test_compact_is_smaller_and_bit_identical_with_an_if_subgraph():
    model = _with_if_branch()
    assert model.graph.value_info  # shape inference filled it
    small, names = compact(model)
    onnx.checker.check_model(small)
    assert small.ByteSize() < model.ByteSize()
    assert not small.graph.value_info
    assert [o.domain for o in small.opset_import] == [""]  # nchwc: no node uses it
    assert all(not n.doc_string for n in small.graph.node)
    # graph I/O and node names stay; names the If branches read from the outer graph stay too
    assert [i.name for i in small.graph.input] == ["x"] and [o.name for o in small.graph.output] == ["logits"]
    assert [n.name for n in small.graph.node] == [n.name for n in model.graph.node]
    kept = {t.name for t in small.graph.initializer} | {o for n in small.graph.node for o in n.output}
    assert {"outer_weight_with_a_long_name", "hidden_activation_long_name"} <= kept
    assert set(names.values()) == {"zero_threshold_long_name", "sum_of_inputs_long_name", "cond_long_name", "branch_out_long_name"}
    assert all(len(short) < len(orig) for short, orig in names.items())
    for x in (np.ones((1, 8), np.float32), -np.ones((1, 8), np.float32)):  # both branches
        a, b = _run(model, {"x": x}), _run(small, {"x": x})
        assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))


def test_restore_names_inverts_the_renaming():
    model = build_mlp()
    small, names = compact(model)
    assert names
    back = restore_names(small, names)
    assert [list(n.input) + list(n.output) for n in back.graph.node] == [list(n.input) + list(n.output) for n in model.graph.node]
    assert sorted(t.name for t in back.graph.initializer) == sorted(t.name for t in model.graph.initializer)


@pytest.fixture(scope="module")
def digits_int8_onnx(digits, tmp_path_factory):
    # one QDQ candidate, so that what is stored does not depend on which candidate this CPU finds fastest
    out = tmp_path_factory.mktemp("compact") / "out"
    recipe = tmp_path_factory.mktemp("recipe") / "qdq.yaml"
    recipe.write_text("steps:\n  - int8: {candidates: [static-qdq-u8s8-perchannel], mixed: false}\nexport: [onnx]\n")
    res = CliRunner().invoke(cli, ["compress", "--recipe", str(recipe), "--data", str(digits["eval"]), "-o", str(out),
                                   str(digits["model"])], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return out


def test_compress_writes_compact_int8_onnx_and_keeps_the_names_in_the_manifest(digits, digits_int8_onnx):
    out = digits_int8_onnx
    m = load_manifest(out, verify_files=True)
    art = m.artifact("digits.int8.onnx")
    model = onnx.load(str(out / "digits.int8.onnx"))
    names = art.extra[NAMES_KEY]
    assert names and not model.graph.value_info
    produced = {o for n in model.graph.node for o in n.output} | {t.name for t in model.graph.initializer}
    assert set(names) <= produced
    # the float model's activation names come back through the mapping, so the per-layer report matches them
    source_tensors = {o for n in onnx.load(str(digits["model"])).graph.node for o in n.output}
    assert source_tensors & set(names.values())
    layers = json.loads((out / "report.json").read_text())["layers"]["digits.int8.onnx"]["layers"]
    assert all(e["tensor"] not in names for e in layers)  # the report speaks the exporter's names, not the short ids
    assert {e["node"] for e in layers} & {"/features/features.0/Conv", "/features/features.3/Conv", "/classifier/classifier.1/Gemm"}
    # int8-sized: the weights are a quarter of fp32 and the structure no longer eats the rest
    assert m.metrics["digits.int8.onnx"]["size_ratio"] <= 0.30


def test_edgekit_report_matches_layers_of_a_compact_artifact(digits, digits_int8_onnx, tmp_path):
    out = tmp_path / "r.json"
    res = CliRunner().invoke(cli, ["report", str(digits["model"]), str(digits_int8_onnx / "digits.int8.onnx"), "--data",
                                   str(digits["eval"]), "--latency-budget", "1", "-o", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rep = json.loads(out.read_text())
    layers = rep["layers"]["digits.int8.onnx"]["layers"]
    assert layers and layers[0]["node"].startswith("/")
