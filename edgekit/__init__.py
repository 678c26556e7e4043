"""edgekit: shrink a model, prove it is still good, put it on devices, watch it, take it back.

    import edgekit
    options = edgekit.CompressOptions(steps=[edgekit.StepSpec("int8")], output="out")
    result = edgekit.compress("model.onnx", "calib.npz", options)

Names load lazily so ``import edgekit`` (and ``edgekit --help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = [
    "CompressOptions",
    "CompressResult",
    "EdgekitError",
    "ExportOptions",
    "Format",
    "Layout",
    "Precision",
    "StepSpec",
    "TfliteConfig",
    "__version__",
    "compress",
    "compress_with_recipe",
    "load_manifest",
    "load_recipe",
]

_LAZY = {
    "compress": "edgekit.compress:compress",
    "compress_with_recipe": "edgekit.compress:compress_with_recipe",
    "CompressOptions": "edgekit.options:CompressOptions",
    "CompressResult": "edgekit.results:CompressResult",
    "EdgekitError": "edgekit.errors:EdgekitError",
    "ExportOptions": "edgekit.export.config:ExportOptions",
    "TfliteConfig": "edgekit.export.config:TfliteConfig",
    "Format": "edgekit.choices:Format",
    "Layout": "edgekit.choices:Layout",
    "Precision": "edgekit.choices:Precision",
    "StepSpec": "edgekit.pipeline:StepSpec",
    "load_manifest": "device_agent.contract.manifest:load_manifest",
    "load_recipe": "edgekit.recipes:load_recipe",
}

if TYPE_CHECKING:  # what type checkers see; at run time each name is imported on first use (below)
    from device_agent.contract.manifest import load_manifest
    from edgekit.choices import Format, Layout, Precision
    from edgekit.compress import compress, compress_with_recipe
    from edgekit.errors import EdgekitError
    from edgekit.export.config import ExportOptions, TfliteConfig
    from edgekit.options import CompressOptions
    from edgekit.pipeline import StepSpec
    from edgekit.recipes import load_recipe
    from edgekit.results import CompressResult


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'edgekit' has no attribute {name!r}")
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)
