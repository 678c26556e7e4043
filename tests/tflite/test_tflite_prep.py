"""An int8 .tflite of a model with an RGB stride-2 stem: converted from the rewritten stem (tests/compress/test_onnx_rewrites.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from device_agent.contract.manifest import load_manifest
from edgekit.compress import CompressOptions, compress
from edgekit.export import ExportOptions, TfliteConfig
from edgekit.pipeline import StepSpec
from tests.compress.test_onnx_rewrites import conv_model


def test_int8_tflite_of_a_stride_2_stem_gets_the_rewrite_and_passes_parity(tmp_path):
    path = tmp_path / "stem.onnx"
    onnx.save(conv_model(size=32, head=True), str(path))
    np.savez(tmp_path / "data.npz", x=np.random.default_rng(2).random((64, 3, 32, 32)).astype(np.float32))
    # the whole-model int8 conversion (search=False): on a model this small the search may well ship the float .tflite
    opts = CompressOptions(steps=[StepSpec("int8", {})], formats=("tflite",), output=tmp_path / "out",
                           export=ExportOptions(tflite=TfliteConfig(search=False)))
    out = compress(path, tmp_path / "data.npz", opts).output
    m = load_manifest(out)
    art = next(a for a in m.artifacts if a.format == "tflite")
    assert art.extra["tflite"]["onnx_rewrites"] == {"space_to_depth_stem": 1}
    assert art.extra["tflite"]["ops"].get("SPACE_TO_DEPTH") == 1
    assert m.metrics[art.file]["parity"]["ok"] and m.metrics[art.file]["cosine"] > 0.99


def _se_block(*, hard_swish: bool = True) -> onnx.ModelProto:
    """x[N, 3, 16, 16] → Conv (16) → HardSwish → SE gate: GAP → Conv 1x1 → Relu → Conv 1x1 → HardSigmoid → Mul → GAP → Gemm (5).

    MobileNetV3's activations: int8 HARD_SWISH and RELU_0_TO_1 (what TFLiteConverter makes of HardSigmoid)
    are ops LiteRT's XNNPACK delegate does not run in int8.
    """
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(a, n) for a, n in (
        ((rng.standard_normal((16, 3, 3, 3)) / 4).astype(np.float32), "w"),
        ((rng.standard_normal((4, 16, 1, 1)) / 4).astype(np.float32), "se1"), ((rng.standard_normal((16, 4, 1, 1)) / 2).astype(np.float32), "se2"),
        ((rng.standard_normal((16, 5)) / 4).astype(np.float32), "fc"), (np.zeros(5, np.float32), "fb"))]
    act = [helper.make_node("HardSwish", ["c"], ["h"], name="hswish")] if hard_swish else [helper.make_node("Relu", ["c"], ["h"], name="relu")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]), *act,
             helper.make_node("GlobalAveragePool", ["h"], ["s0"], name="squeeze"),
             helper.make_node("Conv", ["s0", "se1"], ["s1"], name="se_reduce"), helper.make_node("Relu", ["s1"], ["s2"], name="se_relu"),
             helper.make_node("Conv", ["s2", "se2"], ["s3"], name="se_expand"),
             helper.make_node("HardSigmoid", ["s3"], ["gate"], name="se_gate", alpha=1 / 6, beta=0.5),
             helper.make_node("Mul", ["h", "gate"], ["e"], name="excite"),
             helper.make_node("GlobalAveragePool", ["e"], ["p"], name="gap"), helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc", "fb"], ["y"], name="fc")]
    graph = helper.make_graph(nodes, "se", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_hard_sigmoid_becomes_a_relu6_the_same_to_float_rounding():
    import onnxruntime as ort

    from edgekit.export.tflite_prep import count_ops, hard_sigmoid_as_relu6

    model = _se_block()
    rewritten, n = hard_sigmoid_as_relu6(model)
    assert n == 1 and count_ops(rewritten, "HardSigmoid") == 0 and count_ops(rewritten, "Clip") == 1
    assert count_ops(model, "HardSigmoid") == 1  # the input model is not modified
    onnx.checker.check_model(rewritten)
    x = (np.random.default_rng(0).standard_normal((8, 3, 16, 16)) * 3).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    got = ort.InferenceSession(rewritten.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert hard_sigmoid_as_relu6(conv_model(size=8))[1] == 0


def test_int8_tflite_of_hard_swish_and_an_se_gate_has_no_op_xnnpack_lacks_in_int8(tmp_path):
    path = tmp_path / "se.onnx"
    onnx.save(_se_block(), str(path))
    np.savez(tmp_path / "data.npz", x=np.random.default_rng(2).standard_normal((64, 3, 16, 16)).astype(np.float32))
    opts = CompressOptions(steps=[StepSpec("int8", {"max_drop": 100.0})], formats=("tflite",), output=tmp_path / "out",
                           export=ExportOptions(tflite=TfliteConfig(search=False, per_channel=True)))
    m = load_manifest(compress(path, tmp_path / "data.npz", opts).output)
    art = next(a for a in m.artifacts if a.format == "tflite")
    assert art.extra["tflite"]["onnx_rewrites"] == {"hard_sigmoid_as_relu6": 1, "hard_swish_as_elementwise_ops": 1}
    ops = art.extra["tflite"]["ops"]
    assert "HARD_SWISH" not in ops and "RELU_0_TO_1" not in ops, ops
    assert m.metrics[art.file]["parity"]["ok"]


def test_int8_tflite_of_a_ceil_mode_maxpool_pads_with_edges_not_minus_infinity(tmp_path):
    """MTCNN's ONet: onnx2tf pads a ceil-mode MaxPool with -inf, which calibration turned into a 3e33 bias scale."""
    from tests.compress.test_onnx_rewrites import ceil_pool_model

    path = tmp_path / "onet.onnx"
    onnx.save(ceil_pool_model(24, head=True), str(path))
    np.savez(tmp_path / "data.npz", x=np.random.default_rng(3).standard_normal((64, 3, 24, 24)).astype(np.float32))
    # the whole-model int8 conversion (search=False): on a model this small the int8 search ships the float .tflite (int8 is
    # slower here), and a float .tflite may keep onnx2tf's -inf PADV2; the int8 conversion is what the rewrite is for.
    # It reads "int8" even where the ONNX int8 search kept a layer float (one that times faster in float on a VNNI CPU)
    opts = CompressOptions(steps=[StepSpec("int8", {})], formats=("tflite",), output=tmp_path / "out",
                           export=ExportOptions(tflite=TfliteConfig(search=False)))
    m = load_manifest(compress(path, tmp_path / "data.npz", opts).output)
    art = next(a for a in m.artifacts if a.format == "tflite")
    assert art.precision == "int8" and art.extra["tflite"]["onnx_rewrites"] == {"maxpool_ceil_mode_made_explicit": 1}
    assert "PADV2" not in art.extra["tflite"]["ops"] and "MIRROR_PAD" in art.extra["tflite"]["ops"]  # the edge pad
    assert m.metrics[art.file]["parity"]["ok"] and m.metrics[art.file]["cosine"] > 0.99


def test_tensorflow_children_keep_their_temporary_files_to_themselves(tmp_path, monkeypatch):
    """TF's autograph leaves __autograph_generated_file*.py in the temp directory: a child gets its own, removed with its work."""
    import os
    import tempfile
    import textwrap

    from edgekit.tf_process import run_worker

    pkg = tmp_path / "tmppkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "worker.py").write_text(textwrap.dedent("""
        import sys, tempfile
        from edgekit.tf_process import worker_main
        def run(job, workdir):
            f = tempfile.NamedTemporaryFile(prefix="__autograph_generated_file", suffix=".py", delete=False)
            return {"tmp": f.name}
        sys.exit(worker_main(run))
    """))
    user_tmp = tmp_path / "user-tmp"
    user_tmp.mkdir()
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("TMPDIR", str(user_tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)
    result = run_worker("tmppkg.worker", {}, tmp_path / "job", what="w")
    assert "__autograph_generated_file" in result["tmp"]  # the child did write one
    assert not os.path.exists(result["tmp"]) and list(user_tmp.iterdir()) == []


@pytest.mark.parametrize("mode, onnx_precision, search, want", [
    ("int8", "mixed", None, "int8"),  # a whole-model full-integer conversion: every layer int8, whatever the ONNX search kept float
    ("dynamic", "mixed", None, "int8"),
    ("int8", "int8", {"precision": "mixed", "float_layers": ["conv1"]}, "mixed"),  # the .tflite search's own finding
    ("int8", "int8", {"precision": "fp32", "float_layers": []}, "fp32"),
    ("fp16", "fp16", None, "fp16"),
])
def test_a_tflite_artifact_is_labelled_by_its_own_layers_not_its_onnx_parents(mode, onnx_precision, search, want):
    from pathlib import Path
    from types import SimpleNamespace

    from edgekit.choices import Precision
    from edgekit.export.tflite import _describe

    result = {"inputs": [], "outputs": [], "tflite_names": {}, **({"int8_search": search} if search else {})}
    conv = SimpleNamespace(mode=mode, io=TfliteConfig().io, tf_source=False, rewrites={})
    source = SimpleNamespace(reference=SimpleNamespace(calib_data=None))
    art = _describe(Path("m.tflite"), result, conv, source, SimpleNamespace(precision=Precision(onnx_precision)), TfliteConfig())  # type: ignore[arg-type]
    assert art.precision == want
