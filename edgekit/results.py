"""What a compression run produces, as data: the files exporters wrote and what was measured on them.

These types sit below everything that reads them (``compress`` fills them, ``manifest`` and
``report`` read them), so none of those modules imports another to learn a result's shape.

- :class:`ExportedArtifact`: one file an exporter wrote, in its own layout, and what it was converted from.
- :class:`ArtifactResult`: an exported file once checked: size, sha256, quality, parity, latency.
- :class:`CompressResult`: the whole run: the output directory, its manifest, every artifact, the
  steps' records, notes, the recipe gates' outcome and the report document.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import onnx

    from device_agent.contract.manifest import Artifact, Manifest, TensorSpec
    from device_agent.runtime import Backend
    from edgekit.choices import Format, Precision
    from edgekit.data import Dataset
    from edgekit.evaluate import Latency, Quality

__all__ = ["ArtifactResult", "CompressResult", "ExportedArtifact"]


@dataclass
class ExportedArtifact:
    """One file an exporter wrote. ``inputs``/``outputs`` in the artifact's own layout (with perm)."""

    path: Path
    format: Format
    precision: Precision
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    parent: str | None = None  # the artifact it was converted from (parity reference)
    extra: dict[str, Any] = field(default_factory=dict)
    side_files: list[Path] = field(default_factory=list)  # e.g. the reduced-build operator config
    #: outputs (source layout, over the evaluation data) of the model this artifact was converted from, when
    #: that model is not itself an artifact: a .tflite is converted from the float model, not the int8 .onnx
    reference_outputs: dict[str, np.ndarray] | None = None
    #: a wider absolute parity tolerance, when the exporter knows one is due (an int8 .tflite checked against the
    #: float model may differ from it as much as the accepted int8 .onnx does)
    parity_tolerance: float | None = None

    def record(self) -> Artifact:
        """The manifest record a runtime backend opens this file with (layout perms, session config), before size and hash are known."""
        from device_agent.contract.manifest import Artifact

        runtime = "litert" if self.format == "tflite" else "onnxruntime"
        return Artifact(self.path.name, self.format, self.precision, 0, "0" * 64, runtime, self.inputs, self.outputs, self.extra)


@dataclass
class ArtifactResult:
    """An exported artifact once checked against the source and the model it was converted from."""

    exported: ExportedArtifact
    size_bytes: int
    sha256: str
    quality: Quality
    latency: Latency | None
    parity: dict[str, Any] | None = None
    stats: dict[str, Any] | None = None
    backend: Backend | None = field(default=None, repr=False)  # open until the interleaved timing
    #: parity against the model as the user ran it (scikit-learn, Pillow + the network): :mod:`edgekit.origin`
    origin_parity: dict[str, Any] | None = None
    #: the outputs over the evaluation data, kept until the origin check has read them
    outputs: dict[str, np.ndarray] | None = field(default=None, repr=False)

    @property
    def file(self) -> str:
        return self.exported.path.name


@dataclass
class CompressResult:
    """Everything one ``compress`` run wrote and measured."""

    output: Path
    manifest: Manifest
    source: Path
    source_size: int
    source_latency: Latency
    source_quality: dict[str, Any]
    artifacts: list[ArtifactResult]
    steps: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    failed_bound: str | None = None
    threads: int = 1
    eval_data: Dataset | None = field(default=None, repr=False)  # what quality was measured on (the report's per-layer error)
    float_model: onnx.ModelProto | None = field(default=None, repr=False)  # the model int8 quantized (after prune/distill)
    #: the recipe gates' outcome (:func:`edgekit.recipes.evaluate_gates`), None when the run has no gates
    gates: dict[str, Any] | None = None
    #: the ``report.json`` document (:mod:`edgekit.report`), built once when the directory is written
    report: dict[str, Any] = field(default_factory=dict, repr=False)
