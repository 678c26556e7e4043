"""TensorFlow models → ONNX: a SavedModel directory or a Keras file (``.keras``, legacy ``.h5``).

tf2onnx does the conversion, in a child process (:mod:`edgekit.importers.tensorflow_worker`).
The ONNX model records where it came from (``metadata_props``), so the TFLite exporter can convert
the original TensorFlow model directly with ``TFLiteConverter`` instead of round-tripping through
onnx2tf, as long as no step changed the float model.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx

from edgekit.errors import InputError
from edgekit.export.tflite import TF_SOURCE_KEY, TF_SOURCE_KIND_KEY
from edgekit.tf_process import require, run_worker

__all__ = ["export_tf"]


def export_tf(path: Path, kind: str, out: Path, *, input_shapes: dict[str | None, tuple[int, ...]], progress=lambda m, f: None) -> Path:
    """Convert the SavedModel / Keras file at ``path`` to ``out`` (.onnx); raises ``InputError`` naming the problem."""
    require(("tensorflow", "tf2onnx"), "TensorFlow input", "tflite")
    if kind == "keras":
        require(("keras",), "Keras input", "tflite")
    job = {"kind": kind, "path": str(path.resolve()), "out": str(out.resolve()), "opset": 17,
           "input_shapes": {(k or ""): list(v) for k, v in input_shapes.items()}}
    with tempfile.TemporaryDirectory(prefix="edgekit.tf2onnx.") as tmp:
        run_worker("edgekit.importers.tensorflow_worker", job, Path(tmp), what=f"converting {path.name} to ONNX",
                   error_cls=InputError, on_error=lambda err: f"{path.name}: {err['message']}", progress=progress)
    model = onnx.load(str(out))
    for key, value in ((TF_SOURCE_KEY, str(path.resolve())), (TF_SOURCE_KIND_KEY, kind)):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(out))
    return out
