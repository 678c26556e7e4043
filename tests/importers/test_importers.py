"""PyTorch (module:factory + weights, .pt2) and TensorFlow (SavedModel, .keras) models as `compress` input."""

from __future__ import annotations

import importlib.util
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

from device_agent.contract.manifest import load_manifest
from device_agent.runtime import OrtBackend
from edgekit.cli.main import cli
from edgekit.errors import InputError
from edgekit.importers import detect_kind, parse_input_shapes
from edgekit.importers.userfile import import_user_file

HAS_TF = all(importlib.util.find_spec(m) is not None for m in ("tensorflow", "tf2onnx", "keras", "onnx2tf"))
needs_tf = pytest.mark.skipif(not HAS_TF, reason="needs the tflite extra")


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def assert_clean(res, code: int, *fragments: str) -> None:
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output
    for f in fragments:
        assert f in res.output, res.output


# ---------------------------------------------------------------- arguments


@pytest.mark.parametrize(("arg", "kind"), [
    ("model.onnx", "onnx"), ("model.pt2", "pt2"), ("model.keras", "keras"), ("legacy.h5", "keras"),
    ("nets.py:build_net", "torch_factory"), ("edgekit.examples.digits:DigitsNet", "torch_factory"),
])
def test_detect_kind(arg, kind):
    assert detect_kind(arg) == kind


def test_detect_kind_names_weights_files_and_artifacts():
    with pytest.raises(InputError, match=r"net.pt holds weights, not a model: .* nets.py:build_net --weights net.pt --input-shape"):
        detect_kind("net.pt")
    with pytest.raises(InputError, match=r"m.tflite is already an edge artifact"):
        detect_kind("m.tflite")


def test_a_directory_without_saved_model_pb_is_refused(tmp_path):
    with pytest.raises(InputError, match="directory without saved_model.pb"):
        detect_kind(str(tmp_path))


def test_parse_input_shapes():
    assert parse_input_shapes(["1,3,224,224"]) == {None: (1, 3, 224, 224)}
    assert parse_input_shapes(["image:1,3,8,8", "mask:1,1,8,8"]) == {"image": (1, 3, 8, 8), "mask": (1, 1, 8, 8)}
    with pytest.raises(InputError, match=r"--input-shape '1,a' is not a shape; write 1,3,224,224 or NAME:1,3,224,224"):
        parse_input_shapes(["1,a"])
    with pytest.raises(InputError, match="name each input"):
        parse_input_shapes(["1,3", "x:1,3"])
    with pytest.raises(InputError, match="positive sizes"):
        parse_input_shapes(["1,0,4"])


# ---------------------------------------------------------------- PyTorch module:factory


def test_digits_factory_with_weights_compresses_like_its_onnx_export(digits, tmp_path):
    out = tmp_path / "out"
    res = run("compress", "--int8", "--data", str(digits["eval"]), "-o", str(out), "edgekit.examples.digits:DigitsNet",
              "--weights", str(digits["weights"]), "--input-shape", "1,1,8,8")
    assert_clean(res, 0, "exporting edgekit.examples.digits:DigitsNet to ONNX")
    m = load_manifest(out, verify_files=True)
    assert m.name == "DigitsNet"
    # the model card names what the ONNX was exported from, weights included
    origin = m.raw["source"]["origin"]
    assert origin["kind"] == "torch_factory" and origin["file"] == "edgekit.examples.digits:DigitsNet"
    assert origin["weights"]["file"] == "digits.pt" and len(origin["weights"]["sha256"]) == 64
    assert [list(s.shape) for s in m.inputs] == [["N", 1, 8, 8]]
    # the trained weights were loaded: the source reaches the accuracy of the reference digits.onnx
    ev = np.load(digits["eval"])
    ref_acc = (OrtBackend(digits["model"]).run({"x": ev["x"]})["logits"].argmax(1) == ev["labels"]).mean() * 100
    assert m.metrics["source"]["accuracy"] == pytest.approx(ref_acc, abs=1e-3)
    assert m.metrics["source"]["accuracy"] - m.metrics["DigitsNet.int8.onnx"]["accuracy"] <= 0.5


@pytest.fixture
def nets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "nets.py").write_text(textwrap.dedent("""
        import torch.nn as nn

        def build_net():
            return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

        def other_net():
            return nn.Sequential(nn.Linear(4, 2))

        def not_a_module():
            return {"weights": 1}

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(6, 3)

            def forward(self, x):
                return self.fc(x)
    """))
    (tmp_path / "broken.py").write_text("import not_a_real_package_xyz\n")
    return tmp_path


def test_factory_output_is_named_after_the_factory_in_the_working_directory(nets):
    import torch

    torch.save(import_user_file(nets / "nets.py").build_net().state_dict(), nets / "net.pt")
    res = run("compress", "--fp16", "nets.py:build_net", "--weights", "net.pt", "--input-shape", "1,3,16,16")
    assert_clean(res, 0)
    m = load_manifest(nets / "build_net.fp16", verify_files=True)
    assert [a.file for a in m.artifacts] == ["build_net.fp16.onnx", "build_net.fp16.ort"]


def test_a_module_class_works_as_factory_without_weights_and_says_so(nets):
    res = run("compress", "--fp16", "nets.py:Net", "--input-shape", "1,6")
    assert_clean(res, 0, "no --weights given: exporting nets.py:Net with the weights its factory created")


@pytest.mark.parametrize(("spec", "extra", "message"), [
    ("nets.py:not_a_module", ["--input-shape", "1,3"], "error: nets.py:not_a_module returned builtins.dict, not a torch.nn.Module"),
    ("nets.py:nope", ["--input-shape", "1,3"], "error: nets.py has no callable 'nope'; it defines: Net, build_net, not_a_module, other_net"),
    ("broken.py:build", ["--input-shape", "1,3"], "error: importing broken.py failed: ModuleNotFoundError: No module named 'not_a_real_package_xyz'"),
    ("missing.py:build", ["--input-shape", "1,3"], "error: missing.py not found (from the model spec 'missing.py:build')"),
    ("no_such_pkg_xyz.mod:build", ["--input-shape", "1,3"], "error: cannot import module 'no_such_pkg_xyz.mod' for 'no_such_pkg_xyz.mod:build'"),
    ("nets.py:build_net", [], "error: a PyTorch module:factory needs the input shape: pass --input-shape, e.g. --input-shape 1,3,224,224"),
    ("nets.py:build_net", ["--input-shape", "1,5,16,16"], "error: nets.py:build_net fails on inputs of shape [1, 5, 16, 16]"),
])
def test_factory_errors_are_one_clear_line(nets, spec, extra, message):
    res = run("compress", "--int8", spec, *extra)
    assert_clean(res, 1, message)


def test_weights_that_do_not_fit_name_the_keys(nets):
    import torch

    torch.save(import_user_file(nets / "nets.py").other_net().state_dict(), nets / "other.pt")
    res = run("compress", "--int8", "nets.py:build_net", "--weights", "other.pt", "--input-shape", "1,3,16,16")
    assert_clean(res, 1, "error: other.pt does not fit the module: 2 shape mismatch(es): 0.weight is [2, 4] in the file, [8, 3, 3, 3] "
                 "in the module; 0.bias is [2] in the file, [8] in the module; missing 2 key(s) such as 4.bias, 4.weight. "
                 "Check that the factory builds the same architecture")


def test_a_pickled_module_is_refused_not_unpickled(nets):
    import torch

    torch.save(import_user_file(nets / "nets.py").build_net(), nets / "whole.pt")  # a pickled nn.Module, not a state_dict
    res = run("compress", "--int8", "nets.py:build_net", "--weights", "whole.pt", "--input-shape", "1,3,16,16")
    assert_clean(res, 1, "error: whole.pt cannot be read as plain weights", "torch.load(weights_only=True) and never unpickles arbitrary objects",
                 "torch.save(model.state_dict(), path)")


def test_checkpoint_dicts_and_dataparallel_prefixes_are_accepted(nets):
    import torch

    state = import_user_file(nets / "nets.py").build_net().state_dict()
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, nets / "ckpt.pt")
    res = run("compress", "--fp16", "-o", "out", "nets.py:build_net", "--weights", "ckpt.pt", "--input-shape", "1,3,16,16")
    assert_clean(res, 0)


def test_weights_with_an_onnx_model_is_refused(digits):
    res = run("compress", "--int8", "--weights", str(digits["weights"]), str(digits["model"]))
    assert_clean(res, 1, "error: --weights applies to a PyTorch module:factory; digits.onnx carries its own weights")


# ---------------------------------------------------------------- torch.export .pt2


def test_pt2_program_compresses(tmp_path):
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 10)).eval()
    ep = torch.export.export(net, (torch.randn(2, 1, 8, 8),))
    torch.export.save(ep, str(tmp_path / "net.pt2"))
    res = run("compress", "--int8", str(tmp_path / "net.pt2"))
    assert_clean(res, 0, "exporting net.pt2 to ONNX")
    m = load_manifest(tmp_path / "net.int8", verify_files=True)
    assert [list(s.shape) for s in m.inputs] == [[2, 1, 8, 8]]
    import hashlib

    assert m.raw["source"]["origin"] == {"kind": "pt2", "file": "net.pt2",
                                         "sha256": hashlib.sha256((tmp_path / "net.pt2").read_bytes()).hexdigest()}
    assert m.metrics["net.int8.onnx"]["agreement"] >= 90


def test_pt2_refuses_input_shape_and_bad_files(tmp_path):
    (tmp_path / "junk.pt2").write_bytes(b"not a program")
    res = run("compress", "--int8", str(tmp_path / "junk.pt2"))
    assert_clean(res, 1, "error: junk.pt2 is not a torch.export program (torch.export.load failed")
    res = run("compress", "--int8", "--input-shape", "1,3", str(tmp_path / "junk.pt2"))
    assert_clean(res, 1, "junk.pt2 fixes its input shapes at torch.export time; drop --input-shape")


# ---------------------------------------------------------------- TensorFlow: .keras and SavedModel


def _keras_model(dynamic: bool = False):
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((None, None, 3) if dynamic else (12, 12, 3), name="image")
    x = keras.layers.Conv2D(8, 3, activation="relu")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(5, name="scores")(x))


@pytest.fixture(scope="module")
def keras_int8(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("keras")
    _keras_model().save(str(tmp / "km.keras"))
    np.savez(tmp / "km.npz", image=np.random.default_rng(0).random((64, 12, 12, 3)).astype(np.float32))
    out = tmp / "km.int8"
    res = run("compress", "--int8", "--data", str(tmp / "km.npz"), "--format", "onnx,tflite", str(tmp / "km.keras"))
    return tmp, out, res


@needs_tf
def test_keras_file_gets_onnx_and_a_tflite_straight_from_tensorflow(keras_int8):
    tmp, out, res = keras_int8
    assert_clean(res, 0, "converting km.keras to ONNX (tf2onnx)")
    m = load_manifest(out, verify_files=True)
    assert [list(s.shape) for s in m.inputs] == [["N", 12, 12, 3]] and m.inputs[0].name == "image"
    assert m.raw["source"]["origin"]["kind"] == "keras" and m.raw["source"]["origin"]["file"] == "km.keras"
    art = m.artifact("km.int8.tflite")
    assert art.extra["tflite"]["converter"] == "TFLiteConverter (from the TensorFlow source)"
    assert art.extra["tflite"]["quantization"] == "full-integer int8"
    assert art.inputs[0].perm is None  # a TF model is NHWC already: nothing to transpose
    assert m.metrics["km.int8.tflite"]["parity"]["ok"]


@needs_tf
def test_saved_model_directory_converts(tmp_path):
    _keras_model().export(str(tmp_path / "sm"))
    res = run("compress", "--fp16", str(tmp_path / "sm"))
    assert_clean(res, 0, "converting sm to ONNX (tf2onnx)")
    m = load_manifest(tmp_path / "sm.fp16", verify_files=True)
    assert [a.file for a in m.artifacts] == ["sm.fp16.onnx", "sm.fp16.ort"]
    assert [s.name for s in m.outputs] == ["output_0"]


@needs_tf
def test_dynamic_keras_input_asks_for_input_shape(tmp_path):
    _keras_model(dynamic=True).save(str(tmp_path / "dyn.keras"))
    res = run("compress", "--fp16", str(tmp_path / "dyn.keras"))
    assert_clean(res, 1, "error: dyn.keras: input 'image' has dynamic dims [?, ?, ?, 3]; pass --input-shape image:1,?,?,3 with the sizes filled in")


def test_missing_tensorflow_says_which_extra(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tf2onnx" else real(name, *a))
    (tmp_path / "m.keras").write_bytes(b"x")
    res = run("compress", "--int8", str(tmp_path / "m.keras"))
    assert_clean(res, 1, "error: TensorFlow input needs the tflite extra: pip install 'edgekit[tflite]'")


def _branchy(path) -> None:
    """silero-vad's shape: an If on the sample rate whose other branch takes other sizes (here: 5 columns, the input has 6)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def branch(name: str, c: str):
        return helper.make_graph([helper.make_node("Mul", ["x", c], [f"{name}_y"])], name, [],
                                 [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, ["N", None])])

    inits = [numpy_helper.from_array(np.full((6, 4), 0.5, np.float32), "m6"), numpy_helper.from_array(np.full(5, 2, np.float32), "c5"),
             numpy_helper.from_array(np.array(16000, np.int64), "k")]
    nodes = [helper.make_node("Equal", ["sr", "k"], ["is16k"]),
             helper.make_node("If", ["is16k"], ["y"], then_branch=helper.make_graph(
                 [helper.make_node("MatMul", ["x", "m6"], ["then_y"])], "then", [],
                 [helper.make_tensor_value_info("then_y", TensorProto.FLOAT, ["N", None])]), else_branch=branch("else", "c5"))]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", None]),
                                       helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", None])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_input_shapes_onnxruntime_refuses_to_fix_only_size_the_generated_inputs(tmp_path):
    from edgekit.importers.onnx_shapes import fix_input_shapes

    _branchy(tmp_path / "vad.onnx")
    fixed = fix_input_shapes(tmp_path / "vad.onnx", tmp_path / "fixed.onnx", {"x": (1, 6)})
    assert fixed.shapes == {"x": (1, 6)} and not fixed.written and "Incompatible dimensions" in fixed.why_not
    res = run("compress", "--fp16", "--input-shape", "x:1,6", "-o", str(tmp_path / "out"), str(tmp_path / "vad.onnx"))
    assert_clean(res, 0, "input shapes kept symbolic: onnxruntime does not load vad.onnx with x [1, 6] (",
                 "generated inputs take these sizes", "generated inputs: sr 16000")
    assert load_manifest(tmp_path / "out").inputs[0].shape == ("N", "?")


def test_a_paddle_minus_one_batch_takes_an_input_shape(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgekit.importers.onnx_shapes import fix_input_shapes

    w = numpy_helper.from_array(np.ones((4, 2), np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "p", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, -1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 2])], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 11)]), str(tmp_path / "p.onnx"))
    assert fix_input_shapes(tmp_path / "p.onnx", tmp_path / "fixed.onnx", {None: (1, 4)}).written
    dims = onnx.load(str(tmp_path / "fixed.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_value == -1 and dims[1].dim_value == 4  # the batch stays dynamic, the -1 length takes the given size
