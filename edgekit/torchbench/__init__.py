"""The PyTorch workbench the training steps share: ``prune`` and ``distill`` import it, never each other.

- ``convert``: ONNX ↔ PyTorch (onnx2torch in, the TorchScript exporter out, source names kept).
- ``trainer``: the knowledge-distillation loop (soft targets at temperature T + hard labels,
  validation split, early stopping, best checkpoint; Ctrl-C keeps it).
- ``config``: :class:`TrainingConfig`, the training fields every training step's config shares.
- ``workbench``: a model in PyTorch with its way back to ONNX, the data as arrays, teacher outputs,
  scores on the evaluation data, checkpoint directories, one ``train`` call.
- ``channels``: removing output channels with torch-pruning's dependency graph (structured
  pruning, ``auto:W`` students).

Importing this package does not import torch; the functions that need it do.
"""

from __future__ import annotations

from edgekit.torchbench.config import TrainingConfig, training_settings
from edgekit.torchbench.trainer import FitResult, TrainingInterrupted, TrainSettings, fit

__all__ = ["FitResult", "TrainSettings", "TrainingConfig", "TrainingInterrupted", "fit", "training_settings"]
