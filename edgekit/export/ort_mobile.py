"""ONNX Runtime Mobile: the ``.ort`` flatbuffer and the operator config for a reduced build.

Uses onnxruntime's own converter (``onnxruntime.tools.convert_onnx_models_to_ort``) with fixed
optimizations for one target (:class:`~edgekit.export.config.OrtTarget`): ``arm`` by default, so the
saved graph runs on a Raspberry Pi or phone as well as on x86 (it leaves out the x86-only NCHWc layout
transformer, so its float layers run about 2x slower on x86 than the ``.onnx``'s); ``amd64`` adds that
transformer for x86-64 devices, and such an ``.ort`` loads only there (the agent skips it elsewhere).
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
from pathlib import Path

from edgekit.choices import Format, OrtTarget
from edgekit.errors import ExportError
from edgekit.export.base import ExportSource, exporter
from edgekit.export.compact import NAMES_KEY
from edgekit.export.config import OrtConfig
from edgekit.results import ExportedArtifact

__all__ = ["convert_to_ort", "export_ort"]


def convert_to_ort(onnx_path: Path, out_dir: Path, stem: str, *, scratch: Path | None = None,
                   target: OrtTarget = OrtTarget.ARM) -> tuple[Path, Path | None]:
    """Convert one .onnx file to ``out_dir/<stem>.ort``; returns it and the operator config, if written.

    The converter works in a temporary directory inside ``scratch`` (a run's work directory): a Ctrl-C that lands
    while that directory is created or removed cannot leave it behind, since the run removes its work directory.
    """
    from edgekit.ort_tools import ort_tool

    tool = ort_tool("convert_onnx_models_to_ort")  # onnxruntime.tools itself would import torch (8 s) for nothing used here
    OptimizationStyle, convert_onnx_models_to_ort = tool.OptimizationStyle, tool.convert_onnx_models_to_ort
    with tempfile.TemporaryDirectory(prefix="edgekit.ort.", dir=scratch) as tmp:
        src = Path(tmp) / f"{stem}.onnx"
        shutil.copy(onnx_path, src)
        log = io.StringIO()
        # the converter logs an INFO line per model through its own logging handler: not edgekit's output
        ort_log = logging.getLogger("ort_format_model.utils")
        level = ort_log.level
        ort_log.setLevel(logging.WARNING)
        import onnxruntime

        # an amd64 build makes ORT's C++ logger warn that NCHWc nodes are hardware specific: that is the point of the target
        onnxruntime.set_default_logger_severity(3)
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                convert_onnx_models_to_ort(src, output_dir=Path(tmp) / "out", optimization_styles=[OptimizationStyle.Fixed],
                                           target_platform=OrtTarget(target).value)
        except Exception as e:  # noqa: BLE001 - the converter raises whatever ORT raised
            raise ExportError(f".ort conversion of {onnx_path.name} failed: {_line(e)}; the .onnx artifact is still valid") from None
        finally:
            ort_log.setLevel(level)
            onnxruntime.set_default_logger_severity(2)  # ORT's default: warnings
        ort_file = Path(tmp) / "out" / f"{stem}.ort"
        config = Path(tmp) / "out" / f"{stem}.required_operators.config"
        if not ort_file.is_file():
            raise ExportError(f".ort conversion of {onnx_path.name} wrote nothing: {log.getvalue().strip()[-300:]}")
        dst = out_dir / ort_file.name
        shutil.copy(ort_file, dst)
        if not config.is_file():
            return dst, None
        cfg_dst = out_dir / config.name
        # the converter names its temp path in a comment; name the artifact instead
        lines = [ln if not ln.startswith("# - ") else f"# - {dst.name}" for ln in config.read_text().splitlines()]
        cfg_dst.write_text("\n".join(lines) + "\n")
        return dst, cfg_dst


@exporter(Format.ORT, OrtConfig)
def export_ort(source: ExportSource, out_dir: Path, stem: str, config: OrtConfig) -> list[ExportedArtifact]:
    """Convert the ``.onnx`` artifact to ``<stem>.ort`` (and its operator config); parity is checked against that ``.onnx``."""
    onnx_artifact = source.parent(Format.ORT)
    dst, operators = convert_to_ort(onnx_artifact.path, out_dir, stem, scratch=source.workdir, target=config.target)
    side = [operators] if operators is not None else []
    extra = dict(onnx_artifact.extra)
    extra.pop(NAMES_KEY, None)  # same names as its parent .onnx, whose record keeps the mapping
    extra["required_operators"] = side[0].name if side else None
    extra["ort_target"] = config.target.value  # the agent skips an amd64 .ort on any other CPU
    return [ExportedArtifact(dst, Format.ORT, onnx_artifact.precision, onnx_artifact.inputs, onnx_artifact.outputs,
                             parent=onnx_artifact.path.name, extra=extra, side_files=side)]


def _line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else type(e).__name__)[:300]
