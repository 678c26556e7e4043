"""Exporters: one module per target format, looked up by format (``onnx``, ``ort``, ``tflite``).

The contract (:mod:`edgekit.export.base`): an exporter takes an :class:`ExportSource`, an output
directory, a file stem and its own frozen config (:mod:`edgekit.export.config`), writes its
artifact(s) and returns :class:`~edgekit.results.ExportedArtifact` records. Evaluation, parity and
the manifest are handled by the caller for every format alike. Adding a format: CONTRIBUTING.md.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

from edgekit.choices import Format
from edgekit.errors import RecipeError
from edgekit.export.base import Exporter, ExportSource, exporter
from edgekit.export.config import ExportConfig, ExportOptions, Objective, OnnxConfig, OrtConfig, OrtTarget, TfliteConfig, TfliteIO

__all__ = [
    "EXPORTERS",
    "ExportConfig",
    "ExportOptions",
    "ExportSource",
    "Exporter",
    "Objective",
    "OnnxConfig",
    "OrtConfig",
    "OrtTarget",
    "TfliteConfig",
    "TfliteIO",
    "exporter",
    "get_exporter",
]

# format -> "module:function"; each module is imported only when its format is asked for.
EXPORTERS: dict[Format, str] = {
    Format.ONNX: "edgekit.export.onnx:export_onnx",
    Format.ORT: "edgekit.export.ort_mobile:export_ort",
    Format.TFLITE: "edgekit.export.tflite:export_tflite",
}


def get_exporter(fmt: str) -> Exporter[Any]:
    """The exporter registered for ``fmt``; a RecipeError listing the known formats otherwise."""
    try:
        target = EXPORTERS[Format(fmt)]
    except (ValueError, KeyError):
        near = difflib.get_close_matches(str(fmt), Format.values(), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise RecipeError(f"unknown export format {fmt!r}{hint}; known: {', '.join(sorted(Format.values()))}") from None
    module, attr = target.split(":")
    fn = getattr(importlib.import_module(module), attr)
    if getattr(fn, "format", None) != fmt:
        raise RecipeError(f"exporter registry entry {fmt!r} -> {target} is not a registered exporter")
    exp: Exporter[Any] = fn
    return exp
