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
