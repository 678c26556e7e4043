"""An int8 .tflite of a model with an RGB stride-2 stem: converted from the rewritten stem (tests/compress/test_onnx_rewrites.py)."""

from __future__ import annotations

import numpy as np
import onnx

from device_agent.contract.manifest import load_manifest
from edgekit.compress import CompressOptions, compress
from edgekit.pipeline import StepSpec
from tests.compress.test_onnx_rewrites import conv_model


def test_int8_tflite_of_a_stride_2_stem_gets_the_rewrite_and_passes_parity(tmp_path):
    path = tmp_path / "stem.onnx"
    onnx.save(conv_model(size=32, head=True), str(path))
    np.savez(tmp_path / "data.npz", x=np.random.default_rng(2).random((64, 3, 32, 32)).astype(np.float32))
    out = compress(path, tmp_path / "data.npz", CompressOptions(steps=[StepSpec("int8", {})], formats=("tflite",), output=tmp_path / "out")).output
    m = load_manifest(out)
    art = next(a for a in m.artifacts if a.format == "tflite")
    assert art.extra["tflite"]["onnx_rewrites"] == {"space_to_depth_stem": 1}
    assert art.extra["tflite"]["ops"].get("SPACE_TO_DEPTH") == 1
    assert m.metrics[art.file]["parity"]["ok"] and m.metrics[art.file]["cosine"] > 0.99


def test_int8_tflite_of_a_ceil_mode_maxpool_pads_with_edges_not_minus_infinity(tmp_path):
    """MTCNN's ONet: onnx2tf pads a ceil-mode MaxPool with -inf, which calibration turned into a 3e33 bias scale."""
    from tests.compress.test_onnx_rewrites import ceil_pool_model

    path = tmp_path / "onet.onnx"
    onnx.save(ceil_pool_model(24, head=True), str(path))
    np.savez(tmp_path / "data.npz", x=np.random.default_rng(3).standard_normal((64, 3, 24, 24)).astype(np.float32))
    out = compress(path, tmp_path / "data.npz", CompressOptions(steps=[StepSpec("int8", {})], formats=("tflite",), output=tmp_path / "out")).output
    m = load_manifest(out)
    art = next(a for a in m.artifacts if a.format == "tflite")
    assert art.extra["tflite"]["onnx_rewrites"] == {"maxpool_ceil_mode_made_explicit": 1}
    assert "PADV2" not in art.extra["tflite"]["ops"]
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
