"""The .onnx artifact: the compressed model itself, saved as a single file, stored compactly."""

from __future__ import annotations

from pathlib import Path

import onnx

from edgekit.choices import Format, Precision
from edgekit.export.base import ExportSource, exporter
from edgekit.export.compact import NAMES_KEY, compact
from edgekit.export.config import OnnxConfig
from edgekit.onnx_model import io_specs
from edgekit.results import ExportedArtifact

__all__ = ["export_onnx"]


@exporter(Format.ONNX, OnnxConfig)
def export_onnx(source: ExportSource, out_dir: Path, stem: str, config: OnnxConfig) -> list[ExportedArtifact]:
    """Write ``<stem>.onnx``: the model without what runtimes never read; an int8 model's internal tensors get short names."""
    path = out_dir / f"{stem}.onnx"
    small, names = compact(source.model, rename=source.precision in (Precision.INT8, Precision.MIXED))
    onnx.save(small, str(path))
    ins, outs = io_specs(small)
    extra = dict(source.extra)
    if names:
        # the exporter's tensor names, like debug symbols beside a stripped binary: per-layer reports restore them
        extra[NAMES_KEY] = names
    return [ExportedArtifact(path, Format.ONNX, source.precision, ins, outs, extra=extra)]
