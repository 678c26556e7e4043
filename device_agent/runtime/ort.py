"""ONNX Runtime backend for ``.onnx`` and ``.ort`` artifacts (CPU execution provider).

Imports onnxruntime when a backend is built, not at import: ``edgekit-agent --help`` stays fast.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from device_agent.contract.manifest import Artifact, TensorSpec
from device_agent.contract.types import Feeds
from device_agent.runtime.base import BackendError, first_line, source_spec

__all__ = ["OrtBackend", "specs_from_ort"]

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
    "tensor(string)": "string",
}


def specs_from_ort(args: Iterable[Any]) -> tuple[TensorSpec, ...]:
    """TensorSpecs from ``InferenceSession.get_inputs()``/``get_outputs()`` (onnxruntime's NodeArg has no stubs)."""
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
        opts.log_severity_level = 4  # fatal only: a failed run raises BackendError with ORT's message, which it would also print
        if self.path.suffix == ".ort":
            # ORT-format models are already optimized for the reduced build; keep them as saved.
            opts.add_session_config_entry("session.load_model_format", "ORT")
        # only what the caller passes: a manifest's own session flags are not honoured (older edgekit wrote
        # session.disable_quant_qdq for weight-only int8), so the device runs an artifact exactly as the plain
        # InferenceSession it was judged in, and as any other program on the device would open it
        for key, value in (session_config or {}).items():
            opts.add_session_config_entry(str(key), str(value))
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises several unrelated exception types
            raise BackendError(f"onnxruntime cannot load {self.path.name}: {first_line(e)}") from e
        native_in = specs_from_ort(self.session.get_inputs())
        native_out = specs_from_ort(self.session.get_outputs())
        self._in_perm = _perms(artifact.inputs if artifact else None)
        self._out_inv = {n: (tuple(int(i) for i in np.argsort(p)) if p is not None else None)
                         for n, p in _perms(artifact.outputs if artifact else None).items()}
        # callers speak the source layout, so the specs this backend reports are source-layout too
        self.inputs = tuple(source_spec(s) for s in artifact.inputs) if artifact else native_in
        self.outputs = tuple(source_spec(s) for s in artifact.outputs) if artifact else native_out
        self._out_names = [o.name for o in native_out]
        self._plain = all(p is None for p in self._in_perm.values()) and all(p is None for p in self._out_inv.values())
        # The session's C binding, called directly: ``InferenceSession.run`` re-checks the feed's names,
        # OrtValue ownership and WebGPU graph capture (~3 µs a call, a tenth of a small model's run) —
        # inputs that reached a backend are validated numpy arrays on the CPU provider, so none applies.
        # Same arguments (output names, feeds, run options); the public method if a release renames it.
        self._run = getattr(self.session, "_sess", self.session).run

    def run(self, feeds: Feeds) -> Feeds:
        if self._plain:  # same layout as the source: no per-call transposes (the common case)
            try:
                return dict(zip(self._out_names, self._run(self._out_names, feeds, None), strict=True))
            except Exception as e:
                raise BackendError(f"onnxruntime failed on {self.path.name}: {first_line(e)}") from e
        native = {}
        for name, x in feeds.items():
            p = self._in_perm.get(name)
            native[name] = np.ascontiguousarray(np.transpose(x, p)) if p is not None else x
        try:
            res = self._run(self._out_names, native, None)
        except Exception as e:
            raise BackendError(f"onnxruntime failed on {self.path.name}: {first_line(e)}") from e
        out = {}
        for name, y in zip(self._out_names, res, strict=True):
            inv = self._out_inv.get(name)
            out[name] = np.transpose(y, inv) if inv is not None else y
        return out


def _perms(specs: tuple[TensorSpec, ...] | None) -> dict[str, tuple[int, ...] | None]:
    return {s.name: s.perm for s in specs} if specs else {}
