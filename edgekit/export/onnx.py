"""The .onnx artifact: the compressed model itself, saved as a single file."""

from __future__ import annotations

from pathlib import Path

import onnx

from edgekit.export import ExportedArtifact
from edgekit.onnx_model import io_specs

__all__ = ["export_onnx"]


def export_onnx(model: onnx.ModelProto, out_dir: Path, stem: str, *, precision: str, extra: dict | None = None, **_) -> list[ExportedArtifact]:
    path = out_dir / f"{stem}.onnx"
    onnx.save(model, str(path))
    ins, outs = io_specs(model)
    return [ExportedArtifact(path, "onnx", precision, ins, outs, extra=dict(extra or {}))]
