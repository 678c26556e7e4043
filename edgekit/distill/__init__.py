"""Knowledge distillation: train a smaller student to mimic a teacher, from an ONNX file or a PyTorch model.

- ``step``: the ``distill`` pipeline step (``edgekit distill --teacher model.onnx --student auto:0.5``).
- ``student``: ``auto:W`` students (the teacher, thinner, via structured pruning) and ``module:function`` factories.
- ``teacher``: a PyTorch teacher exported to ONNX so the run has a source like any other.
- ``trainer``: the KD loop (soft targets at temperature T + hard labels, validation split, early
  stopping, best checkpoint, Ctrl-C keeps it), shared with pruning recovery.
- ``convert``: ONNX ↔ PyTorch (onnx2torch in, the TorchScript exporter out, source names kept).
- ``workbench``: what the training steps share (data as arrays, teacher outputs, scores, checkpoints).

Importing this package does not import torch; the functions that need it do.
"""

from __future__ import annotations

from edgekit.distill.config import DistillConfig, TrainingConfig
from edgekit.distill.trainer import FitResult, TrainingInterrupted, TrainSettings, fit

__all__ = ["DistillConfig", "FitResult", "TrainSettings", "TrainingConfig", "TrainingInterrupted", "fit"]
