"""The reference a run judges every model against: the source model's outputs on the evaluation data.

One :class:`Reference` is built per ``compress`` run and handed to the steps (in their
:class:`~edgekit.pipeline.Context`), to the int8 search and to the exporters, so "as accurate as the
source" and "matches the model it was converted from" mean the same thing everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from device_agent.contract.manifest import TensorSpec
from edgekit.data import Dataset
from edgekit.evaluate import Quality, compare, parity

__all__ = ["OriginCheck", "Reference"]


@runtime_checkable
class OriginCheck(Protocol):
    """The model as the user ran it before edgekit made it one ONNX graph, which every artifact is also checked against.

    A scikit-learn pipeline (``predict``/``predict_proba``), or an image network fed by Pillow
    preprocessing: the artifacts take the same raw inputs, so their outputs must match the original's.
    """

    #: what the artifacts are compared with, for the manifest and messages ("scikit-learn predict_proba")
    against: str

    def expected(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The original's outputs on a batch of raw inputs, named like the ONNX model's outputs."""
        ...

    def judge(self, expected: dict[str, np.ndarray], got: dict[str, np.ndarray], *, precision: str) -> dict[str, Any]:
        """The parity record of an artifact's outputs ``got`` against ``expected`` (JSON-clean; ``ok`` says whether it passes)."""
        ...

    def manifest_sections(self, data: Any) -> dict[str, Any]:
        """What the manifest records about the original (top-level sections), given the training data (a Dataset)."""
        ...


@dataclass(frozen=True)
class Reference:
    """The source model (its file and signature), the data, and the source's outputs on the evaluation data.

    ``calib_data`` is the data the user gave (calibration and training), None when the run works on
    generated inputs; ``eval_data`` is what quality is measured on (held-out data when given, else a
    subset of the given or generated data).
    """

    source_path: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    classifier: bool
    eval_data: Dataset
    calib_data: Dataset | None
    ref_outputs: dict[str, np.ndarray]
    ref_accuracy: float | None

    @property
    def first_output(self) -> str:
        return self.outputs[0].name

    def quality(self, outputs: dict[str, np.ndarray]) -> Quality:
        """How close ``outputs`` (over ``eval_data``) are to the source's: accuracy, agreement or cosine, and the drop."""
        return compare(self.ref_outputs, outputs, classifier=self.classifier, first_output=self.first_output,
                       labels=self.eval_data.labels, ref_accuracy=self.ref_accuracy, generated=self.eval_data.generated)

    def parity(self, parent: dict[str, np.ndarray], outputs: dict[str, np.ndarray], precision: str, *,
               tolerance: float | None = None) -> dict[str, Any]:
        """Whether ``outputs`` compute what ``parent`` (the model they were converted from) does (:func:`edgekit.evaluate.parity`)."""
        return parity(parent, outputs, precision, tolerance=tolerance, classifier=self.classifier, first_output=self.first_output)
