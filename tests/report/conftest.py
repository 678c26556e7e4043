"""Fixed small models for report tests, and the ``--update-golden`` switch.

Regenerate the golden JSON files after an intended change (new key, different rounding, a new
onnxruntime that writes different int8 bytes) with::

    pytest tests/report --update-golden        # or EDGEKIT_UPDATE_GOLDEN=1 pytest tests

and review the diff like code.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.conftest import build_mlp


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", default=False, help="Rewrite tests/report/golden/*.json from this run.")


@pytest.fixture
def update_golden(request) -> bool:
    return bool(request.config.getoption("--update-golden", default=False)) or os.environ.get("EDGEKIT_UPDATE_GOLDEN") == "1"


class _Reader:
    def __init__(self, x: np.ndarray) -> None:
        self._it = iter([{"x": x[i : i + 16]} for i in range(0, len(x), 16)])

    def get_next(self):
        return next(self._it, None)


@pytest.fixture(scope="session")
def mlp_set(tmp_path_factory) -> dict[str, Path]:
    """mlp.onnx (fp32), mlp.fp16.onnx, mlp.int8.onnx (static QDQ, per-tensor) and data.npz (x, labels).

    Everything is seeded; labels are the fp32 model's own answers with 10% flipped, so accuracy is
    below 100% and every model's accuracy is a real number to compare.
    """
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.transformers.float16 import convert_float_to_float16

    d = tmp_path_factory.mktemp("mlp_set")
    fp32 = build_mlp(64, 256, 4, seed=0)  # weights dominate the file, as in real models
    onnx.save(fp32, d / "mlp.onnx")
    onnx.save(convert_float_to_float16(fp32, keep_io_types=True), d / "mlp.fp16.onnx")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((256, 64)).astype(np.float32)
    quantize_static(str(d / "mlp.onnx"), str(d / "mlp.int8.onnx"), _Reader(x[:64]), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=False,
                    calibrate_method=CalibrationMethod.MinMax)
    logits = ort.InferenceSession(str(d / "mlp.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    labels = logits.argmax(1)
    flip = rng.random(len(labels)) < 0.1
    labels[flip] = (labels[flip] + 1) % 4
    np.savez(d / "data.npz", x=x, labels=labels.astype(np.int64))
    return {"fp32": d / "mlp.onnx", "fp16": d / "mlp.fp16.onnx", "int8": d / "mlp.int8.onnx", "data": d / "data.npz"}


@pytest.fixture(scope="session")
def digits_mobile(digits, tmp_path_factory) -> Path:
    """digits compressed with the int8-mobile recipe: .onnx, .ort and an NHWC .tflite, with a manifest."""
    from click.testing import CliRunner

    from edgekit.cli.main import cli

    out = tmp_path_factory.mktemp("mobile") / "digits.int8"
    res = CliRunner().invoke(cli, ["compress", "--recipe", "int8-mobile", "--data", str(digits["eval"]), "-o", str(out),
                                   str(digits["model"])])
    assert res.exit_code == 0, res.output
    return out
