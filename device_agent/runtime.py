"""Inference backends: one small protocol, one class per runtime.

Callers always speak the *source* layout (the one in the manifest's ``signature``); a backend
transposes into its artifact's own layout (``TensorSpec.perm``) and back, so an NHWC .tflite and
an NCHW .onnx answer the same request the same way. Models are loaded once, at construction.

This module imports numpy and onnxruntime (lazily, LiteRT) only: it runs on the device.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np

from device_agent.errors import AgentError
from device_agent.manifest import Artifact, TensorSpec

__all__ = ["Backend", "BackendError", "OrtBackend", "default_threads", "litert_available", "open_backend", "runtime_versions", "source_spec", "specs_from_ort"]


class BackendError(AgentError, RuntimeError):
    """The runtime could not load or run an artifact."""


class Backend(Protocol):
    """What every runtime wrapper offers. ``run`` takes and returns source-layout arrays."""

    path: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    runtime: str

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}


def specs_from_ort(args) -> tuple[TensorSpec, ...]:
    """TensorSpecs from ``InferenceSession.get_inputs()``/``get_outputs()``."""
    out = []
    for a in args:
        shape = tuple(d if isinstance(d, int) else (d or "?") for d in (a.shape or ()))
        out.append(TensorSpec(a.name, _ORT_TYPES.get(a.type, a.type), shape))
    return tuple(out)


class OrtBackend:
    """ONNX Runtime over a .onnx or .ort file (CPU execution provider)."""

    runtime = "onnxruntime"

    def __init__(
        self, path: str | Path, artifact: Artifact | None = None, *, threads: int = 1, session_config: dict[str, str] | None = None
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        if self.path.suffix == ".ort":
            # ORT-format models are already optimized for the reduced build; keep them as saved.
            opts.add_session_config_entry("session.load_model_format", "ORT")
        # e.g. weight-only int8 artifacts ask ORT to fold their DequantizeLinear at load time
        config = dict((artifact.extra.get("session_config") if artifact else None) or {})
        config.update(session_config or {})
        for key, value in config.items():
            opts.add_session_config_entry(str(key), str(value))
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises several unrelated exception types
            raise BackendError(f"onnxruntime cannot load {self.path.name}: {_first_line(e)}") from e
        native_in = specs_from_ort(self.session.get_inputs())
        native_out = specs_from_ort(self.session.get_outputs())
        self._in_perm = _perms(artifact.inputs if artifact else None, native_in)
        self._out_inv = {n: (np.argsort(p) if p is not None else None) for n, p in _perms(artifact.outputs if artifact else None, native_out).items()}
        # callers speak the source layout, so the specs this backend reports are source-layout too
        self.inputs = tuple(source_spec(s) for s in artifact.inputs) if artifact else native_in
        self.outputs = tuple(source_spec(s) for s in artifact.outputs) if artifact else native_out
        self._out_names = [o.name for o in native_out]
        self._plain = all(p is None for p in self._in_perm.values()) and all(p is None for p in self._out_inv.values())

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._plain:  # same layout as the source: no per-call transposes (the common case)
            try:
                return dict(zip(self._out_names, self.session.run(self._out_names, feeds), strict=True))
            except Exception as e:
                raise BackendError(f"onnxruntime failed on {self.path.name}: {_first_line(e)}") from e
        native = {}
        for name, x in feeds.items():
            p = self._in_perm.get(name)
            native[name] = np.ascontiguousarray(np.transpose(x, p)) if p is not None else x
        try:
            res = self.session.run(self._out_names, native)
        except Exception as e:
            raise BackendError(f"onnxruntime failed on {self.path.name}: {_first_line(e)}") from e
        out = {}
        for name, y in zip(self._out_names, res, strict=True):
            inv = self._out_inv.get(name)
            out[name] = np.transpose(y, inv) if inv is not None else y
        return out


def open_backend(path: str | Path, artifact: Artifact | None = None, *, threads: int = 1) -> Backend:
    """Open the right backend for a file by its format (``.onnx``/``.ort`` → ORT, ``.tflite`` → LiteRT)."""
    p = Path(path)
    if p.suffix in (".onnx", ".ort"):
        return OrtBackend(p, artifact, threads=threads)
    if p.suffix == ".tflite":
        from device_agent.litert import LiteRTBackend

        return LiteRTBackend(p, artifact, threads=threads)
    raise BackendError(f"{p.name}: unknown model format {p.suffix!r}; expected .onnx, .ort or .tflite")


def source_spec(spec: TensorSpec) -> TensorSpec:
    """The source-layout view of an artifact-layout spec (undoes ``perm``: ``art.shape[i] = src.shape[perm[i]]``)."""
    if spec.perm is None:
        return spec
    shape: list = [None] * len(spec.shape)
    layout: list[str] | None = [""] * len(spec.shape) if spec.layout and len(spec.layout) == len(spec.shape) else None
    for i, p in enumerate(spec.perm):
        shape[p] = spec.shape[i]
        if layout is not None:
            layout[p] = spec.layout[i]  # type: ignore[index]
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


def _perms(specs: tuple[TensorSpec, ...] | None, native: tuple[TensorSpec, ...]) -> dict[str, tuple[int, ...] | None]:
    if not specs:
        return {}
    return {s.name: s.perm for s in specs}


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
