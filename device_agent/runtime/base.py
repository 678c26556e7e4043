"""What every runtime backend is: one small protocol, its error, and the layout helpers they share.

Callers always speak the *source* layout (the one in the manifest's ``signature``); a backend
transposes into its artifact's own layout (``TensorSpec.perm``) and back, so an NHWC .tflite and
an NCHW .onnx answer the same request the same way. Models are loaded once, at construction.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from device_agent.contract.errors import AgentError
from device_agent.contract.manifest import TensorSpec
from device_agent.contract.types import Feeds

__all__ = ["Backend", "BackendError", "default_threads", "first_line", "litert_available", "runtime_versions", "source_spec"]


class BackendError(AgentError, RuntimeError):
    """The runtime could not load or run an artifact."""


class Backend(Protocol):
    """What every runtime wrapper offers. ``run`` takes and returns source-layout arrays."""

    path: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    runtime: str

    def run(self, feeds: Feeds) -> Feeds: ...


def source_spec(spec: TensorSpec) -> TensorSpec:
    """The source-layout view of an artifact-layout spec (undoes ``perm``: ``art.shape[i] = src.shape[perm[i]]``)."""
    if spec.perm is None:
        return spec
    shape: list[int | str | None] = [None] * len(spec.shape)
    layout: list[str] | None = [""] * len(spec.shape) if spec.layout and len(spec.layout) == len(spec.shape) else None
    for i, p in enumerate(spec.perm):
        shape[p] = spec.shape[i]
        if layout is not None and spec.layout is not None:
            layout[p] = spec.layout[i]
    return TensorSpec(spec.name, spec.dtype, tuple(shape), "".join(layout) if layout else None, None)


def runtime_versions() -> dict[str, str]:
    """Versions of the installed runtimes, without importing the heavy ones."""
    from importlib import metadata

    out = {}
    for dist in ("onnxruntime", "ai-edge-litert", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def litert_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("ai_edge_litert") is not None


def default_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def first_line(e: BaseException) -> str:
    """The first line of an exception's text: runtimes put pages of context below it."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
