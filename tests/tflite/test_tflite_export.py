"""`edgekit compress --format ...,tflite`: every precision, layouts, parity through LiteRT, offline, bad input.

TF conversions are slow (a child process importing TensorFlow), so each conversion is a
module-scoped fixture that several tests read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from device_agent.contract.manifest import load_manifest
from device_agent.runtime import OrtBackend, open_backend
from edgekit.cli.main import cli
from edgekit.compress import CompressOptions, compress
from edgekit.errors import ExportError
from tests.tflite.conftest import build_image_model, image_data


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def tflite_of(manifest):
    return next(a for a in manifest.artifacts if a.format == "tflite")


# ---------------------------------------------------------------- full-integer int8, int8 I/O (digits CNN)


@pytest.fixture(scope="module")
def digits_int8(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("tfl-int8") / "out"
    res = run("compress", "--int8", "--data", str(digits["eval"]), "--format", "onnx,ort,tflite", "--tflite-io", "int8",
              "-o", str(out), str(digits["model"]))
    assert res.exit_code == 0, res.output
    return out, res.output


def test_int8_writes_the_tflite_beside_onnx_and_ort(digits_int8):
    out, output = digits_int8
    m = load_manifest(out, verify_files=True)
    assert [a.format for a in m.artifacts] == ["onnx", "ort", "tflite"]
    art = m.artifact("digits.int8.tflite")
    assert art.runtime == "litert" and art.precision == "int8"
    assert art.extra["tflite"]["quantization"].startswith("full-integer int8")  # layers slower in int8 here may stay float
    assert art.extra["tflite"]["io"] == "int8"
    assert art.extra["tflite"]["calibration_samples"] == 256
    assert "digits.int8.tflite" in output


def test_int8_tflite_records_its_nhwc_layout_as_data(digits_int8):
    out, _ = digits_int8
    m = load_manifest(out)
    art = m.artifact("digits.int8.tflite")
    (x,) = art.inputs
    assert (x.name, list(x.shape), x.layout, x.perm, x.dtype) == ("x", ["N", 8, 8, 1], "NHWC", (0, 2, 3, 1), "int8")
    (logits,) = art.outputs
    assert (list(logits.shape), logits.perm) == (["N", 10], None)
    # the source signature stays NCHW float: callers never see the artifact's layout or int8
    assert [list(s.shape) for s in m.inputs] == [["N", 1, 8, 8]] and m.inputs[0].dtype == "float32"


def test_int8_tflite_keeps_accuracy_and_passes_parity(digits_int8):
    out, _ = digits_int8
    m = load_manifest(out)
    metrics = m.metrics["digits.int8.tflite"]
    assert m.metrics["source"]["accuracy"] - metrics["accuracy"] <= 0.5
    assert metrics["parity"]["ok"] is True
    assert metrics["parity"]["against"] == "digits.onnx (float source)"
    assert metrics["parity"]["agreement"] >= 99.0
    # held to the float model, with room for as much int8 error as the accepted int8 .onnx has
    assert metrics["parity"]["allowed"] >= 1.5 * m.metrics["digits.int8.onnx"]["max_abs_error"] * (1 - 1e-5)
    assert metrics["size_ratio"] < 0.35


def test_int8_io_model_takes_int8_and_the_backend_quantizes_for_the_caller(digits_int8, digits):
    from ai_edge_litert.interpreter import Interpreter

    out, _ = digits_int8
    path = out / "digits.int8.tflite"
    it = Interpreter(model_path=str(path))
    (inp,), (outp,) = it.get_input_details(), it.get_output_details()
    assert inp["dtype"] == np.int8 and outp["dtype"] == np.int8
    scale, zero = inp["quantization"]
    m = load_manifest(out)
    backend = open_backend(path, m.artifact(path.name))
    assert backend.inputs[0].dtype == "float32" and list(backend.inputs[0].shape) == ["N", 1, 8, 8]
    x = np.load(digits["eval"])["x"][:1]  # NCHW float, as the caller has it
    got = backend.run({"x": x})["logits"]
    # by hand: NHWC, quantize with the input's scale/zero point, dequantize the output
    q = np.clip(np.round(x.transpose(0, 2, 3, 1) / scale) + zero, -128, 127).astype(np.int8)
    it.allocate_tensors()
    it.set_tensor(inp["index"], q)
    it.invoke()
    o_scale, o_zero = outp["quantization"]
    want = (it.get_tensor(outp["index"]).astype(np.float32) - o_zero) * o_scale
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_litert_backend_matches_the_source_on_batches_in_source_layout(digits_int8, digits):
    out, _ = digits_int8
    m = load_manifest(out)
    x = np.load(digits["eval"])["x"][:96]
    src = OrtBackend(digits["model"]).run({"x": x})["logits"]
    backend = open_backend(out / "digits.int8.tflite", m.artifact("digits.int8.tflite"))
    got = np.concatenate([backend.run({"x": x[i : i + 32]})["logits"] for i in range(0, 96, 32)])
    assert got.shape == src.shape
    assert (got.argmax(1) == src.argmax(1)).mean() >= 0.99


def test_manifest_selftest_vectors_replay_on_the_tflite(digits_int8):
    out, _ = digits_int8
    m = load_manifest(out)
    backend = open_backend(out / "digits.int8.tflite", m.artifact("digits.int8.tflite"))
    vectors = m.selftest_vectors("digits.int8.tflite")
    assert vectors
    for inputs, expected in vectors:
        got = backend.run(inputs)
        np.testing.assert_allclose(got["logits"], expected["logits"], atol=1e-5)


def test_bare_tflite_loads_without_a_manifest_in_its_own_layout(digits_int8, digits):
    from device_agent.runtime.litert import LiteRTBackend

    out, _ = digits_int8
    backend = LiteRTBackend(out / "digits.int8.tflite")
    (spec,) = backend.inputs
    assert (spec.name, list(spec.shape), spec.dtype) == ("x", ["N", 8, 8, 1], "float32")
    x = np.load(digits["eval"])["x"][:4].transpose(0, 2, 3, 1)
    assert backend.run({"x": x})["logits"].shape == (4, 10)


def test_the_agent_side_imports_no_tensorflow(digits_int8):
    out, _ = digits_int8
    code = textwrap.dedent(f"""
        import sys, numpy as np
        from device_agent.contract.manifest import load_manifest
        from device_agent.runtime import open_backend
        m = load_manifest({str(out)!r})
        b = open_backend({str(out / 'digits.int8.tflite')!r}, m.artifact('digits.int8.tflite'))
        b.run({{'x': np.zeros((1, 1, 8, 8), np.float32)}})
        heavy = sorted(k for k in ('tensorflow', 'onnx', 'torch', 'keras', 'tf_keras') if k in sys.modules)
        print('HEAVY', heavy)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "HEAVY []" in res.stdout
    assert "XNNPACK" not in res.stderr  # LiteRT's native INFO line is dropped


# ---------------------------------------------------------------- dynamic-range int8 (no data), fp16, fp32


def test_int8_without_data_is_dynamic_range_and_says_int8_io_needs_data(digits, tmp_path):
    out = tmp_path / "out"
    res = run("compress", "--int8", "--format", "tflite", "--tflite-io", "int8", "-o", str(out), str(digits["model"]))
    assert res.exit_code == 0, res.output
    assert "--tflite-io int8 applies to full-integer int8 models (--int8 with --data)" in res.output
    m = load_manifest(out, verify_files=True)
    assert [a.file for a in m.artifacts] == ["digits.int8.tflite"]  # --format tflite alone: no .onnx
    art = m.artifact("digits.int8.tflite")
    assert art.extra["tflite"]["quantization"] == "dynamic-range int8" and art.extra["tflite"]["io"] == "float"
    assert art.inputs[0].dtype == "float32"
    assert m.metrics["digits.int8.tflite"]["parity"]["ok"] is True


def test_fp16_tflite_alone_halves_the_file_and_stays_close(digits, tmp_path):
    out = tmp_path / "out"
    res = run("compress", "--fp16", "--data", str(digits["eval"]), "--format", "tflite", "-o", str(out), str(digits["model"]))
    assert res.exit_code == 0, res.output
    m = load_manifest(out, verify_files=True)
    art = m.artifact("digits.fp16.tflite")
    assert art.precision == "fp16" and art.extra["tflite"]["quantization"] == "float16"
    metrics = m.metrics["digits.fp16.tflite"]
    assert metrics["size_ratio"] < 0.6
    assert metrics["parity"]["ok"] and metrics["parity"]["max_abs_error"] < 2e-2
    assert m.metrics["source"]["accuracy"] - metrics["accuracy"] <= 0.2


@pytest.fixture(scope="module")
def image_fp32(tmp_path_factory):
    """fp32 .tflite of a dynamic-batch image model with a 4-D (NCHW) second output."""
    tmp = tmp_path_factory.mktemp("tfl-fp32")
    model = tmp / "img.onnx"
    onnx.save(build_image_model(batch="N"), str(model))
    data = tmp / "img.npz"
    np.savez(data, image=image_data())
    result = compress(model, data, CompressOptions(formats=("onnx", "tflite"), output=tmp / "out"))
    return result, model


def test_fp32_tflite_matches_onnx_and_restores_nchw_outputs(image_fp32):
    result, model = image_fp32
    art = next(r for r in result.artifacts if r.exported.format == "tflite")
    assert art.exported.precision == "fp32" and art.exported.extra["tflite"]["quantization"] == "none"
    stripped = art.exported.extra["tflite"]["stripped"]  # fp32 is stripped as int8 is: size ratios compare like with like
    assert stripped["removed"]["tensor_names"] > 0 and stripped["bytes"] < stripped["converter_bytes"]
    specs = {s.name: s for s in art.exported.outputs}
    assert specs["features"].perm == (0, 2, 3, 1) and specs["features"].layout == "NHWC"
    assert list(specs["features"].shape) == ["N", 8, 8, 8] and specs["logits"].perm is None
    assert art.parity["ok"] and art.parity["max_abs_error"] < 1e-4
    x = image_data(5, seed=9)
    want = OrtBackend(model).run({"image": x})
    got = open_backend(result.output / art.file, load_manifest(result.output).artifact(art.file)).run({"image": x})
    assert got["features"].shape == (5, 8, 8, 8)  # NCHW again
    for k in want:
        np.testing.assert_allclose(got[k], want[k], atol=1e-4)


# ---------------------------------------------------------------- offline: a fixed-batch 3-channel image model


SOCKET_GUARD = '''
import os, socket
_log = os.environ["EDGEKIT_TEST_SOCKET_LOG"]
open(_log + ".loaded", "a").close()  # proves the guard ran in the child
def _refuse(self, address, *a, **k):
    with open(_log, "a") as f:
        f.write(repr(address) + "\\n")
    raise OSError("network access is blocked in this test")
socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
_orig = socket.getaddrinfo
def _no_dns(host, *a, **k):
    if host not in ("localhost", "127.0.0.1", "::1", None):
        with open(_log, "a") as f:
            f.write("dns " + str(host) + "\\n")
        raise socket.gaierror("DNS is blocked in this test")
    return _orig(host, *a, **k)
socket.getaddrinfo = _no_dns
'''


def test_fixed_batch_rgb_model_converts_with_the_network_blocked(tmp_path, monkeypatch):
    # onnx2tf would download sample images for exactly this input: 4-D, 3 channels, batch 1
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(SOCKET_GUARD)
    log = tmp_path / "connections.log"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(guard), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("EDGEKIT_TEST_SOCKET_LOG", str(log))
    model = tmp_path / "rgb.onnx"
    onnx.save(build_image_model(batch=1, channels=3, size=16), str(model))
    data = tmp_path / "rgb.npz"
    np.savez(data, image=image_data(40, size=16))
    res = run("compress", "--int8", "--data", str(data), "--format", "onnx,tflite", "-o", str(tmp_path / "out"), str(model))
    assert res.exit_code == 0, res.output
    assert not log.exists(), log.read_text()
    assert (tmp_path / "connections.log.loaded").exists()  # the TF child ran under the guard
    m = load_manifest(tmp_path / "out", verify_files=True)
    art = tflite_of(m)
    # int8 throughout, or with the layers that ran slower in int8 on this CPU kept float (the latency-aware search, timed)
    assert art.extra["tflite"]["quantization"].startswith("full-integer int8") and art.extra["tflite"]["io"] == "float"
    assert list(art.inputs[0].shape) == [1, 16, 16, 3]
    assert m.metrics[art.file]["parity"]["ok"]


def test_socket_guard_is_effective(tmp_path, monkeypatch):
    """The guard above really blocks a child process's network (so the offline test means something)."""
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(SOCKET_GUARD)
    log = tmp_path / "connections.log"
    env = {**os.environ, "PYTHONPATH": str(guard), "EDGEKIT_TEST_SOCKET_LOG": str(log)}
    code = "import socket\ntry:\n    socket.create_connection(('github.com', 443), timeout=2)\nexcept OSError as e:\n    print('blocked', e)"
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert "blocked" in res.stdout and "github.com" in log.read_text()


# ---------------------------------------------------------------- bad input


def test_an_op_onnx2tf_cannot_convert_is_named_and_the_rest_is_written(tmp_path):
    model = tmp_path / "lp.onnx"
    onnx.save(build_image_model(batch="N", extra_op="LpPool"), str(model))
    out = tmp_path / "out"
    res = run("compress", "--int8", "--format", "onnx,ort,tflite", "-o", str(out), str(model))
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    assert "error: onnx2tf cannot convert op LpPool (node 'lp_pool_1'), so no .tflite was written." in res.output
    assert f"Still written to {out}: lp.int8.onnx, lp.int8.ort" in res.output
    m = load_manifest(out, verify_files=True)
    assert [a.format for a in m.artifacts] == ["onnx", "ort"]


def test_dynamic_dims_ask_for_input_shape_naming_the_input(tmp_path):
    model = build_image_model(batch="N")
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    for out in model.graph.output:
        if out.name == "features":
            d = out.type.tensor_type.shape.dim
            d[2].dim_param, d[3].dim_param = "H", "W"
    path = tmp_path / "dyn.onnx"
    onnx.save(model, str(path))
    res = run("compress", "--fp16", "--format", "tflite", "-o", str(tmp_path / "out"), str(path))
    assert res.exit_code == 1, res.output
    assert ("error: input 'image' has dynamic dims [N, 3, H, W]; a .tflite needs fixed sizes except the batch axis. "
            "Pass --input-shape image:1,3,?,? with the sizes filled in") in res.output
    assert not (tmp_path / "out").exists()
    # the fix the message asks for works
    res = run("compress", "--fp16", "--format", "tflite", "--input-shape", "image:1,3,8,8", "-o", str(tmp_path / "out"), str(path))
    assert res.exit_code == 0, res.output
    art = tflite_of(load_manifest(tmp_path / "out"))
    assert list(art.inputs[0].shape) == ["N", 8, 8, 3]


def test_missing_extra_says_how_to_install_before_any_work(digits, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx2tf" else real(name, *a))
    res = run("compress", "--int8", "--format", "onnx,tflite", "-o", str(tmp_path / "out"), str(digits["model"]))
    assert res.exit_code == 1
    assert "error: TFLite export needs the tflite extra: pip install 'edgekit[tflite]'" in res.output
    assert not (tmp_path / "out").exists()


def test_tflite_io_without_tflite_format_is_a_usage_error(digits):
    res = run("compress", "--int8", "--tflite-io", "int8", str(digits["model"]))
    assert res.exit_code == 2 and "--tflite-io applies to the .tflite artifact; add tflite to --format" in res.output


def test_tflite_weights_without_tflite_format_is_a_usage_error(digits):
    res = run("compress", "--int8", "--tflite-weights", "per-tensor", str(digits["model"]))
    assert res.exit_code == 2 and "--tflite-weights applies to the .tflite artifact; add tflite to --format" in res.output


@pytest.mark.parametrize(("body", "fragment"), [
    ("import os; os.abort()", "crashed inside TensorFlow (SIGABRT)"),
    ("import sys; print('E onnx2tf: something broke'); sys.exit(1)", "failed (exit 1): E onnx2tf: something broke"),
])
def test_a_crashing_tf_child_becomes_one_clean_error(tmp_path, monkeypatch, body, fragment):
    from edgekit.tf_process import run_worker

    pkg = tmp_path / "crashpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "worker.py").write_text(body + "\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    with pytest.raises(ExportError) as e:
        run_worker("crashpkg.worker", {}, tmp_path / "job", what="TFLite conversion of m.onnx")
    assert str(e.value).startswith("TFLite conversion of m.onnx ")
    assert fragment in str(e.value)


def test_worker_errors_come_back_as_their_message(tmp_path, monkeypatch):
    from edgekit.tf_process import run_worker

    pkg = tmp_path / "errpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "worker.py").write_text(textwrap.dedent("""
        import sys
        from edgekit.tf_process import WorkerError, worker_main
        def run(job, workdir):
            raise WorkerError("unsupported_op", "no converter for op Foo", op_type="Foo", node="n1")
        sys.exit(worker_main(run))
    """))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    with pytest.raises(ExportError) as e:
        run_worker("errpkg.worker", {"x": 1}, tmp_path / "job", what="w",
                   on_error=lambda err: f"{err['op_type']} at {err['node']}: {err['message']}")
    assert str(e.value) == "Foo at n1: no converter for op Foo"
    assert json.loads((tmp_path / "job" / "job.json").read_text()) == {"x": 1}


def test_library_refuses_an_unknown_tflite_option_before_any_work():
    from pydantic import ValidationError

    from edgekit.errors import RecipeError
    from edgekit.export import ExportOptions

    with pytest.raises(RecipeError, match=r"^export: tflite\.io: Input should be 'float' or 'int8' \(given 'int4'\)$"):
        ExportOptions.parse({"tflite": {"io": "int4"}}, what="export")
    with pytest.raises(RecipeError, match=r"^export: unknown field 'tflite\.stirp' \(did you mean 'strip'\?\); allowed: calib_samples, io, "
                                          r"objective, per_channel, search, strip$"):
        ExportOptions.parse({"tflite": {"stirp": False}}, what="export")
    with pytest.raises(ValidationError, match=r"export\.tflite\.io\n  Input should be 'float' or 'int8'"):
        CompressOptions(formats=("tflite",), export={"tflite": {"io": "int4"}})
    with pytest.raises(RecipeError, match=r"^export: tflite\.objective: Input should be 'balanced', 'latency' or 'size' \(given 'speed'\)$"):
        ExportOptions.parse({"tflite": {"objective": "speed"}}, what="export")


def _two_input_model() -> onnx.ModelProto:
    """b[N, 6] listed first, image a[N, 3, 4, 4] second: inputs are matched by name, not position or rank."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    w = numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) / 5).astype(np.float32), "w")
    fc = numpy_helper.from_array((rng.standard_normal((10, 3)) / 3).astype(np.float32), "fc")
    nodes = [
        helper.make_node("Conv", ["a", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r0"], name="relu"),
        # a padded MaxPool: onnx2tf would pad with -3.4e38, which wrecks int8 calibration (see tflite_prep)
        helper.make_node("MaxPool", ["r0"], ["r"], name="pool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Concat", ["f", "b"], ["cat"], name="cat", axis=1),
        helper.make_node("MatMul", ["cat", "fc"], ["scores"], name="fc"),
    ]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 6]),
                                             helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3, 4, 4])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])], initializer=[w, fc])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_two_inputs_full_int8_are_calibrated_and_fed_by_name(tmp_path):
    path = tmp_path / "two.onnx"
    onnx.save(_two_input_model(), str(path))
    rng = np.random.default_rng(4)
    data = tmp_path / "two.npz"
    # 256 samples: random weights give near-tied scores, and with 64 one flipped sample is 1.56 pts, over the 1-pt bound
    # (with 7-bit weights only one int8 candidate kept every sample of 64; of 256, every static one is within the bound)
    np.savez(data, a=rng.random((256, 3, 4, 4)).astype(np.float32), b=rng.standard_normal((256, 6)).astype(np.float32))
    res = run("compress", "--int8", "--data", str(data), "--format", "tflite", "-o", str(tmp_path / "out"), str(path))
    assert res.exit_code == 0, res.output
    m = load_manifest(tmp_path / "out")
    art = tflite_of(m)
    specs = {s.name: s for s in art.inputs}
    assert specs["a"].perm == (0, 2, 3, 1) and specs["b"].perm is None
    assert art.extra["tflite_names"]["inputs"] == {"b": "b", "a": "a"}
    assert art.extra["tflite"]["onnx_rewrites"] == {"maxpool_padding_made_explicit": 1}
    assert "PADV2" not in art.extra["tflite"]["ops"]
    assert m.metrics[art.file]["parity"]["ok"] and m.metrics[art.file]["cosine"] > 0.99


def test_a_tflite_that_disagrees_with_its_float_model_fails_naming_the_output(tmp_path, monkeypatch, mlp_model):
    import edgekit.export.tflite as tfl

    real = tfl._reference

    def skewed(*a, **k):  # stand-in for a broken conversion: the reference the .tflite is held to moves away
        outs, label = real(*a, **k)
        return {name: v[:, ::-1] * 1.5 for name, v in outs.items()}, label

    monkeypatch.setattr(tfl, "_reference", skewed)
    res = run("compress", "--fp16", "--format", "onnx,tflite", "-o", str(tmp_path / "out"), str(mlp_model))
    assert res.exit_code == 1, res.output
    assert "error: mlp.fp16.tflite does not match mlp.onnx (float source): output 'logits' max abs error" in res.output
    assert f"pass --allow-mismatch to keep it anyway. Still written to {tmp_path / 'out'}: mlp.fp16.onnx" in res.output
    # the failing format costs only itself: the .onnx is written, checked and listed; no .tflite ships
    assert [a.file for a in load_manifest(tmp_path / "out", verify_files=True).artifacts] == ["mlp.fp16.onnx"]
    assert not (tmp_path / "out" / "mlp.fp16.tflite").exists()


@pytest.mark.parametrize("after", ["Relu", "Identity"])
def test_maxpool_padding_is_made_explicit_exactly(after):
    """0-padding after a Relu, edge padding otherwise: the pooled values never change."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from edgekit.export.tflite_prep import explicit_maxpool_padding

    nodes = [helper.make_node(after, ["x"], ["h"], name="act"),
             helper.make_node("MaxPool", ["h"], ["y"], name="pool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 9, 9])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 5, 5])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    rewritten, n = explicit_maxpool_padding(model)
    assert n == 1
    pad = next(node for node in rewritten.graph.node if node.op_type == "Pad")
    assert helper.get_attribute_value(pad.attribute[0]) == (b"constant" if after == "Relu" else b"edge")
    x = -np.abs(np.random.default_rng(0).standard_normal((2, 3, 9, 9))).astype(np.float32) - 1  # all negative: 0-padding would be wrong
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    got = ort.InferenceSession(rewritten.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, want)


def test_onnx2tf_failures_are_read_from_its_log(tmp_path):
    """onnx2tf logs the failing node (with colour codes) and then raises or exits: the message names the op and node."""
    from edgekit.export.tflite_keras import onnx2tf_failure as _onnx2tf_failure

    (tmp_path / "worker.log").write_text(
        "\x1b[31mERROR:\x1b[0m The trace log is below.\n"
        "\x1b[31mERROR:\x1b[0m onnx_op_type: Resize onnx_op_name: /up/Resize\n"
        "\x1b[31mERROR:\x1b[0m Read this and deal with it.\n")
    err = _onnx2tf_failure(tmp_path, ValueError("Dimensions must be equal"))
    assert (err.kind, err.details) == ("op_failed", {"op_type": "Resize", "node": "/up/Resize"})
    assert str(err) == "onnx2tf could not convert node '/up/Resize' (Resize): Dimensions must be equal"
    (tmp_path / "worker.log").write_text("\x1b[31mERROR:\x1b[0m FooBar OP is not yet implemented.\n")
    err = _onnx2tf_failure(tmp_path)
    assert (err.kind, err.details, str(err)) == ("unsupported_op", {"op_type": "FooBar"}, "onnx2tf has no converter for op FooBar")
