"""Bad input gets one clear line, the right exit code, no traceback and nothing half-written."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from edgekit.cli.main import cli
from tests.conftest import build_mlp


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def assert_clean_failure(res, code: int, *fragments: str) -> None:
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output
    for f in fragments:
        assert f in res.output, res.output


def assert_nothing_written(parent) -> None:
    leftovers = [p.name for p in parent.iterdir() if p.name.startswith(".") or p.name.endswith(".int8")]
    assert leftovers == [], leftovers


def test_missing_model_file(tmp_path):
    res = invoke("compress", "--int8", str(tmp_path / "nope.onnx"))
    assert_clean_failure(res, 1, f"error: model file not found: {tmp_path / 'nope.onnx'}")
    assert_nothing_written(tmp_path)


def test_a_file_that_is_not_onnx(tmp_path):
    p = tmp_path / "notes.onnx"
    p.write_text("this is not a model\n" * 20)
    res = invoke("compress", "--int8", str(p))
    assert_clean_failure(res, 1, "notes.onnx is not an ONNX model")
    assert_nothing_written(tmp_path)


def test_an_empty_file(tmp_path):
    p = tmp_path / "empty.onnx"
    p.write_bytes(b"")
    assert_clean_failure(invoke("compress", "--int8", str(p)), 1, "empty.onnx is empty (0 bytes); re-export the model")


def test_a_truncated_model(mlp_model, tmp_path):
    data = mlp_model.read_bytes()
    p = tmp_path / "cut.onnx"
    p.write_bytes(data[: len(data) // 2])
    res = invoke("compress", "--int8", str(p))
    assert_clean_failure(res, 1, "cut.onnx")
    assert "truncated" in res.output or "not an ONNX model" in res.output
    assert_nothing_written(tmp_path)


def test_an_opset_onnxruntime_cannot_run(tmp_path):
    m = build_mlp(opset=17)
    m.opset_import[0].version = 99
    p = tmp_path / "future.onnx"
    onnx.save(m, p)
    res = invoke("compress", "--int8", str(p))
    assert_clean_failure(res, 1, "future.onnx uses opset 99, which onnxruntime", "cannot run", "re-export with a lower opset")
    assert_nothing_written(tmp_path)


def test_external_data_that_is_missing(tmp_path):
    m = build_mlp(hidden=256)
    p = tmp_path / "ext.onnx"
    onnx.save(m, p, save_as_external_data=True, all_tensors_to_one_file=True, location="ext.weights", size_threshold=0)
    (tmp_path / "ext.weights").unlink()
    res = invoke("compress", "--int8", str(p))
    assert_clean_failure(res, 1, "ext.onnx keeps its weights in external data file(s) ext.weights, not found next to it",
                         "copy them beside the model")
    assert_nothing_written(tmp_path)


def test_external_data_that_is_present_works(tmp_path, mlp_data):
    p = tmp_path / "ext.onnx"
    onnx.save(build_mlp(hidden=256), p, save_as_external_data=True, all_tensors_to_one_file=True, location="ext.weights", size_threshold=0)
    res = invoke("compress", "--int8", "--data", str(mlp_data), str(p))
    assert res.exit_code == 0, res.output
    assert (tmp_path / "ext.int8" / "ext.int8.onnx").is_file()


def test_data_with_the_wrong_shape_names_input_expected_and_given(digits, tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((10, 8, 8), np.float32))
    res = invoke("compress", "--int8", "--data", str(bad), "-o", str(tmp_path / "o"), str(digits["model"]))
    assert_clean_failure(res, 1, "Input 'x' expects shape [N, 1, 8, 8] (float32); bad.npz gives [10, 8, 8] (float32). Add the missing axis")
    assert not (tmp_path / "o").exists()


def test_data_in_the_other_layout_suggests_data_layout(tmp_path):
    m = _conv_model()
    p = tmp_path / "conv.onnx"
    onnx.save(m, p)
    bad = tmp_path / "nhwc.npz"
    np.savez(bad, x=np.zeros((4, 8, 8, 3), np.float32))
    res = invoke("compress", "--int8", "--data", str(bad), str(p))
    assert_clean_failure(res, 1, "Input 'x' expects shape [N, 3, 8, 8]", "pass --data-layout NHWC")
    ok = invoke("compress", "--int8", "--data", str(bad), "--data-layout", "NHWC", str(p))
    assert ok.exit_code == 0, ok.output


def test_data_with_an_unsafe_dtype(digits, tmp_path):
    bad = tmp_path / "s.npz"
    np.savez(bad, x=np.full((4, 1, 8, 8), "a"))
    res = invoke("compress", "--int8", "--data", str(bad), str(digits["model"]))
    assert_clean_failure(res, 1, "Input 'x' expects float32; s.npz gives <U1, which does not convert safely")


def test_data_with_arrays_named_after_nothing(tmp_path):
    p = tmp_path / "two.onnx"
    onnx.save(_two_input_model(), p)
    bad = tmp_path / "d.npz"
    np.savez(bad, a=np.zeros((4, 4), np.float32), b=np.zeros((4, 4), np.float32))
    res = invoke("compress", "--int8", "--data", str(bad), str(p))
    assert_clean_failure(res, 1, "d.npz has no array for input(s) 'x', 'y'; it has a, b. Name each array after a model input")


def test_an_existing_output_directory_is_refused_unless_force(mlp_model, mlp_data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    res = invoke("compress", "--int8", "--data", str(mlp_data), "-o", str(out), str(mlp_model))
    assert_clean_failure(res, 1, f"output directory {out} exists; pass --force to replace it")
    assert (out / "keep.txt").read_text() == "mine"
    res = invoke("compress", "--int8", "--data", str(mlp_data), "-o", str(out), "--force", str(mlp_model))
    assert res.exit_code == 0, res.output
    assert not (out / "keep.txt").exists() and (out / "mlp.int8.onnx").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["compress", "MODEL"], "nothing to do: pass --int8, --fp16, --prune RATIO or --recipe NAME"),
        (["compress", "--int8", "--fp16", "MODEL"], "choose one of --int8 and --fp16"),
        (["compress", "--int8", "--format", "onnx,pdf", "MODEL"], "'pdf' is not a format; choose from onnx, ort, tflite"),
        (["compress", "--int8", "--calibration", "magic", "MODEL"], "'magic' is not one of 'minmax', 'entropy', 'percentile'"),
    ],
)
def test_usage_errors_exit_2(mlp_model, args, fragment):
    res = invoke(*[str(mlp_model) if a == "MODEL" else a for a in args])
    assert_clean_failure(res, 2, fragment)


def test_debug_shows_the_traceback(tmp_path):
    res = CliRunner().invoke(cli, ["--debug", "compress", "--int8", str(tmp_path / "nope.onnx")])
    assert res.exit_code == 1
    assert res.exception is not None and "model file not found" in str(res.exception)


def _conv_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) / 5).astype(np.float32), "w")
    w2 = numpy_helper.from_array((rng.standard_normal((8 * 8 * 8, 4)) / 20).astype(np.float32), "w2")
    shape = numpy_helper.from_array(np.array([0, -1], np.int64), "shape")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Reshape", ["r", "shape"], ["f"]),
        helper.make_node("MatMul", ["f", "w2"], ["logits"]),
    ]
    g = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], initializer=[w, w2, shape])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _two_input_model() -> onnx.ModelProto:
    nodes = [helper.make_node("Add", ["x", "y"], ["s"]), helper.make_node("MatMul", ["s", "w"], ["out"])]
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    g = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
                                          helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4])], initializer=[w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m
