"""Exporters: one module per target format, looked up by name (``onnx``, ``ort``, ``tflite``).

An exporter takes the final ONNX model file inside the output directory and writes its
artifact(s) next to it, returning :class:`ExportedArtifact` records; evaluation, parity and the
manifest are handled by the caller for every format alike.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

from device_agent.contract.manifest import TensorSpec
from edgekit.errors import RecipeError

__all__ = ["EXPORTERS", "ExportedArtifact", "exporter"]


@dataclass
class ExportedArtifact:
    """One file an exporter wrote. ``inputs``/``outputs`` in the artifact's own layout (with perm)."""

    path: Path
    format: str  # onnx | ort | tflite
    precision: str  # fp32 | fp16 | int8 | mixed
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    parent: str | None = None  # the artifact it was converted from (parity reference)
    extra: dict = field(default_factory=dict)
    side_files: list[Path] = field(default_factory=list)  # e.g. the reduced-build operator config
    #: outputs (source layout, over the evaluation data) of the model this artifact was converted from, when
    #: that model is not itself an artifact: a .tflite is converted from the float model, not the int8 .onnx
    reference_outputs: dict | None = None
    #: a wider absolute parity tolerance, when the exporter knows one is due (an int8 .tflite checked against the
    #: float model may differ from it as much as the accepted int8 .onnx does)
    parity_tolerance: float | None = None


# format -> "module:function"; each module is imported only when its format is asked for.
EXPORTERS: dict[str, str] = {
    "onnx": "edgekit.export.onnx:export_onnx",
    "ort": "edgekit.export.ort_mobile:export_ort",
    "tflite": "edgekit.export.tflite:export_tflite",
}


def exporter(fmt: str):
    target = EXPORTERS.get(fmt)
    if target is None:
        raise RecipeError(f"unknown export format {fmt!r}; known: {', '.join(sorted(EXPORTERS))}")
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)
