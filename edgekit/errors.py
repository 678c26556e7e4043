"""edgekit's exceptions. One tree; the CLI turns any ``EdgekitError`` into one clean line, exit 1.

::

    EdgekitError
    ├── InputError        a model or data file that is missing, malformed or doesn't match
    │   ├── DataError     calibration / evaluation data that doesn't fit the model
    │   └── ConversionError  onnx2torch cannot convert the model (edgekit.torchbench.convert)
    ├── RecipeError       a recipe or step configuration that does not validate
    ├── ExportError       an exporter (.ort, .tflite, ONNX from torch/TF) failed
    ├── AccuracyError     no candidate met the accuracy bound (CLI exit 3)
    ├── GateError         an artifact missed a recipe gate: accuracy, size or latency (CLI exit 3)
    ├── MissingExtraError an optional dependency group is not installed
    ├── Interrupted       Ctrl-C; the message says what was kept and what was cleaned up (exit 130)
    ├── TrainingInterrupted  Ctrl-C while training; names the kept best checkpoint (exit 130; edgekit.torchbench.trainer)
    └── FleetError        signing, deployment, the broker connection and fleet operations
"""

from __future__ import annotations

__all__ = [
    "AccuracyError",
    "DataError",
    "EdgekitError",
    "ExportError",
    "FleetError",
    "GateError",
    "InputError",
    "Interrupted",
    "MissingExtraError",
    "RecipeError",
]


class EdgekitError(Exception):
    """Base of every error edgekit raises on purpose. ``exit_code`` is what the CLI returns."""

    exit_code = 1


class InputError(EdgekitError):
    """A model file that is missing, is not ONNX, is corrupt, or cannot run."""


class DataError(InputError):
    """Data whose names, shapes or dtypes do not fit the model."""


class RecipeError(EdgekitError):
    """A recipe or step configuration that does not validate."""


class ExportError(EdgekitError):
    """An exporter failed; the message says what was still written."""


class AccuracyError(EdgekitError):
    """No candidate met the accuracy bound. The best one was still kept."""

    exit_code = 3


class GateError(EdgekitError):
    """An artifact missed a recipe gate (accuracy drop, size, latency). The output was still written."""

    exit_code = 3


class Interrupted(EdgekitError):
    """Ctrl-C stopped an operation; the message says what was kept (exit 130, as a shell reports SIGINT)."""

    exit_code = 130


class MissingExtraError(EdgekitError):
    """An optional dependency is missing; the message says which extra to install."""

    def __init__(self, what: str, extra: str) -> None:
        super().__init__(f"{what} needs the {extra} extra: pip install 'edgekit[{extra}]'")
        self.extra = extra


class FleetError(EdgekitError):
    """Signing, deployment, the broker connection and fleet operations (not the device's ``device_agent.contract.errors.OtaError``)."""
