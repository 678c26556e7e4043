"""edgekit: shrink a model, prove it is still good, put it on devices, watch it, take it back.

    import edgekit
    result = edgekit.compress("model.onnx", [edgekit.StepSpec("int8")], data="calib.npz", output="out")

Names load lazily so ``import edgekit`` (and ``edgekit --help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["StepSpec", "__version__", "compress", "load_manifest"]

_LAZY = {
    "compress": "edgekit.compress:compress",
    "StepSpec": "edgekit.pipeline:StepSpec",
    "load_manifest": "device_agent.contract.manifest:load_manifest",
}


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'edgekit' has no attribute {name!r}")
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)
