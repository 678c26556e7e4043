"""Pruning that shrinks models for real.

- ``structured``: whole channels removed (fewer params, MACs, bytes and milliseconds); output
  layers and ``keep`` layers are never pruned. The channel surgery is :mod:`edgekit.torchbench.channels`.
- ``unstructured``: magnitude pruning zeroes weights (smaller when gzipped or int8 + gzipped;
  never faster on ONNX Runtime).
- ``sensitivity``: prune each layer alone to see which layers to spare.
- ``step`` / ``config``: the ``prune`` pipeline step (``edgekit compress --prune 0.5 [--structured]``) and its config.

The modules import torch only inside functions; ``edgekit.prune.config`` validates configs without it.
"""

from __future__ import annotations

from edgekit.prune.sensitivity import sensitivity_scan
from edgekit.prune.unstructured import magnitude_masks
from edgekit.torchbench.channels import Importance, prune_channels

__all__ = ["Importance", "magnitude_masks", "prune_channels", "sensitivity_scan"]
