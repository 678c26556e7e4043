"""Pruning that shrinks models for real.

- ``structured``: torch-pruning's dependency graph removes whole channels (fewer params, MACs,
  bytes and milliseconds); output layers and ``keep`` layers are never pruned.
- ``unstructured``: magnitude pruning zeroes weights (smaller when gzipped or int8 + gzipped;
  never faster on ONNX Runtime).
- ``sensitivity``: prune each layer alone to see which layers to spare.
- ``step``: the ``prune`` pipeline step (``edgekit compress --prune 0.5 [--structured]``).

The modules import torch only inside functions; ``edgekit.prune.step`` validates configs without it.
"""

from __future__ import annotations

from edgekit.prune.sensitivity import sensitivity_scan
from edgekit.prune.structured import Importance, prune_channels
from edgekit.prune.unstructured import magnitude_masks

__all__ = ["Importance", "magnitude_masks", "prune_channels", "sensitivity_scan"]
