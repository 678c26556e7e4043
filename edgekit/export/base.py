"""The exporter contract: what every exporter takes and returns.

An exporter is a function registered for one :class:`~edgekit.choices.Format` with its config class
(see :func:`exporter`)::

    @exporter(Format.ORT, OrtConfig)
    def export_ort(source: ExportSource, out_dir: Path, stem: str, config: OrtConfig) -> list[ExportedArtifact]: ...

It writes ``out_dir/<stem>.<ext>`` (and side files) and describes what it wrote; checking the
artifact (quality, parity, latency), the manifest and the report are the caller's, the same for
every format. :class:`ExportSource` carries what an exporter may need, and nothing of the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from edgekit.choices import Format, Precision
from edgekit.errors import ExportError
from edgekit.export.config import ExportConfig
from edgekit.runlog import RunLog

if TYPE_CHECKING:
    import onnx

    from edgekit.reference import Reference
    from edgekit.results import ExportedArtifact

__all__ = ["ExportSource", "Exporter", "exporter"]

C = TypeVar("C", bound=ExportConfig, contravariant=True)


@dataclass(frozen=True)
class ExportSource:
    """What an exporter converts, and what it may check and calibrate the conversion with.

    ``model`` is the compressed model (what the ``.onnx`` artifact holds) at ``precision``;
    ``onnx_artifact`` is that ``.onnx`` once written (formats converted from it: ``.ort``, the
    ``.tflite``'s signature and parity); ``float_model`` is the last float model before quantization
    (TFLite quantizes it with its own calibrator). ``reference`` holds the calibration and
    evaluation data and the source's outputs; ``workdir`` is scratch space removed after the run.
    """

    model: onnx.ModelProto
    precision: Precision
    reference: Reference
    workdir: Path
    log: RunLog = field(default_factory=RunLog)
    threads: int = 1
    extra: dict[str, Any] = field(default_factory=dict)  # what the steps recorded for the artifact (e.g. the int8 candidate)
    float_model: onnx.ModelProto | None = None
    onnx_artifact: ExportedArtifact | None = None

    def converted_from(self, artifact: ExportedArtifact) -> ExportSource:
        """This source with its ``.onnx`` artifact written: what the formats converted from it take."""
        return replace(self, onnx_artifact=artifact)

    def parent(self, fmt: Format) -> ExportedArtifact:
        """The ``.onnx`` artifact ``fmt`` is converted from; an ExportError when it was not written first."""
        if self.onnx_artifact is None:
            raise ExportError(f"the {fmt} exporter converts the .onnx artifact, which was not written first; export onnx before {fmt}")
        return self.onnx_artifact


class Exporter(Protocol[C]):
    """A registered exporter: ``(source, out_dir, stem, config) -> [ExportedArtifact]``, with its format and config class."""

    format: Format
    config_cls: type[ExportConfig]

    def __call__(self, source: ExportSource, out_dir: Path, stem: str, config: C, /) -> list[ExportedArtifact]: ...


def exporter(fmt: Format, config_cls: type[ExportConfig]) -> Callable[[Callable[..., list[ExportedArtifact]]], Exporter[Any]]:
    """Mark a function as the exporter of ``fmt`` taking ``config_cls`` (the registry in :mod:`edgekit.export` finds it)."""

    def deco(fn: Callable[..., list[ExportedArtifact]]) -> Exporter[Any]:
        fn.format = fmt  # type: ignore[attr-defined]
        fn.config_cls = config_cls  # type: ignore[attr-defined]
        return cast("Exporter[Any]", fn)

    return deco
