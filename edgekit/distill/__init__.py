"""Knowledge distillation: train a smaller student to mimic a teacher, from an ONNX file or a PyTorch model.

- ``step``: the ``distill`` pipeline step (``edgekit distill --teacher model.onnx --student auto:0.5``).
- ``student``: ``auto:W`` students (the teacher, thinner, via :mod:`edgekit.torchbench.channels`) and
  ``module:function`` factories.
- ``teacher``: a PyTorch teacher exported to ONNX so the run has a source like any other.
- ``config``: the step's typed config.

The training loop, ONNX ↔ PyTorch conversion and channel removal are the shared
:mod:`edgekit.torchbench`. Importing this package does not import torch; the functions that need it do.
"""

from __future__ import annotations

from edgekit.distill.config import DistillConfig

__all__ = ["DistillConfig"]
