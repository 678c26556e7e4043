"""The .onnx artifact: the compressed model itself, saved as a single file, stored compactly."""

from __future__ import annotations

from pathlib import Path

import onnx

from edgekit.export import ExportedArtifact
from edgekit.export.compact import NAMES_KEY, compact
from edgekit.onnx_model import io_specs

__all__ = ["export_onnx"]


def export_onnx(model: onnx.ModelProto, out_dir: Path, stem: str, *, precision: str, extra: dict | None = None, **_) -> list[ExportedArtifact]:
    path = out_dir / f"{stem}.onnx"
    small, names = compact(model, rename=precision == "int8")
    onnx.save(small, str(path))
    ins, outs = io_specs(small)
    extra = dict(extra or {})
    if names:
        # the exporter's tensor names, like debug symbols beside a stripped binary: per-layer reports restore them
        extra[NAMES_KEY] = names
    return [ExportedArtifact(path, "onnx", precision, ins, outs, extra=extra)]
