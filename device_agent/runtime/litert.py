"""LiteRT (TensorFlow Lite) backend for ``.tflite`` artifacts, with the same interface as ``OrtBackend``.

Callers speak the *source* layout; the backend transposes each input into the artifact's layout
(``TensorSpec.perm``, e.g. NCHW → NHWC) and each output back. Models converted with int8
inputs/outputs (``--tflite-io int8``) take and return float arrays here: inputs are quantized and
outputs dequantized with each tensor's own scale and zero point, read from the model file.

Inputs and outputs are found by the model's ``serving_default`` signature names (edgekit writes
one; the artifact's ``extra["tflite_names"]`` maps source names to them), else by position.
Tensors are resized only when a request's shape changes, so steady-state calls are one
``invoke``. XNNPACK is applied by the interpreter's default delegate.

Imports numpy and ai-edge-litert only (falling back to ``tflite_runtime``, then ``tensorflow.lite``
if neither is installed): this module runs on the device.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from device_agent.contract.manifest import Artifact, TensorSpec
from device_agent.contract.types import Array, Feeds
from device_agent.runtime.base import BackendError, first_line, source_spec

__all__ = ["LiteRTBackend", "load_interpreter_class"]

_INT_TYPES = (np.int8, np.uint8, np.int16)
#: the interpreter's tensor details by signature (or tensor) name: dicts from a library without type hints
_Details = dict[str, dict[str, Any]]


def load_interpreter_class() -> type[Any]:
    """The LiteRT ``Interpreter`` class from the lightest package installed."""
    interpreter: type[Any]
    try:
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter
        return interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter as TfliteInterpreter

        interpreter = TfliteInterpreter
        return interpreter
    except ImportError:
        # never TensorFlow: the agent must stay installable on a Pi without it
        raise BackendError(".tflite artifacts need the LiteRT runtime: pip install ai-edge-litert (or tflite-runtime)") from None


class _Port:
    """One input or output tensor: its interpreter index, native spec and quantization."""

    __slots__ = ("name", "index", "dtype", "scale", "zero_point", "perm", "inv")

    def __init__(self, name: str, detail: dict[str, Any], perm: tuple[int, ...] | None) -> None:
        self.name = name
        self.index = int(detail["index"])
        self.dtype = np.dtype(detail["dtype"])
        q = detail.get("quantization_parameters") or {}
        scales, zps = q.get("scales"), q.get("zero_points")
        quantized = self.dtype.type in _INT_TYPES and scales is not None and len(scales) == 1 and float(scales[0]) > 0
        self.scale = float(scales[0]) if quantized and scales is not None else None
        self.zero_point = int(zps[0]) if quantized and zps is not None else 0
        self.perm = perm
        self.inv = tuple(int(i) for i in np.argsort(perm)) if perm is not None else None


class LiteRTBackend:
    """The LiteRT interpreter over a ``.tflite`` file (CPU, XNNPACK)."""

    runtime = "litert"

    def __init__(self, path: str | Path, artifact: Artifact | None = None, *, threads: int = 1) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()  # a LiteRT interpreter is not thread-safe; ORT sessions are, callers may assume so
        interpreter_cls = load_interpreter_class()
        try:
            with _quiet_native_info():
                self.interpreter = interpreter_cls(model_path=str(self.path), num_threads=max(1, threads))
                self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise BackendError(f"LiteRT cannot load {self.path.name}: {first_line(e)}") from e
        in_details, out_details = self._details()
        names = (artifact.extra.get("tflite_names") if artifact else None) or {}
        in_specs = {s.name: s for s in artifact.inputs} if artifact else {}
        out_specs = {s.name: s for s in artifact.outputs} if artifact else {}
        self._inputs = self._ports(in_details, artifact.inputs if artifact else None, names.get("inputs") or {}, "input")
        self._outputs = self._ports(out_details, artifact.outputs if artifact else None, names.get("outputs") or {}, "output")
        self._shapes: dict[int, tuple[int, ...]] = {p.index: tuple(int(d) for d in in_details[_key(in_details, p.index)]["shape"])
                                                     for p in self._inputs}
        # callers speak the source layout (and float for quantized I/O), so the specs reported are that view
        self.inputs = tuple(self._caller_spec(p, in_specs.get(p.name), in_details) for p in self._inputs)
        self.outputs = tuple(self._caller_spec(p, out_specs.get(p.name), out_details) for p in self._outputs)

    def _details(self) -> tuple[_Details, _Details]:
        """Input/output tensor details keyed by signature name (or tensor name without a signature)."""
        it = self.interpreter
        sigs = it.get_signature_list() if hasattr(it, "get_signature_list") else {}
        if sigs:
            key = "serving_default" if "serving_default" in sigs else next(iter(sigs))
            runner = it.get_signature_runner(key)
            return runner.get_input_details(), runner.get_output_details()
        return ({d["name"]: d for d in it.get_input_details()}, {d["name"]: d for d in it.get_output_details()})

    def _ports(self, details: _Details, specs: tuple[TensorSpec, ...] | None, names: dict[str, str], kind: str) -> list[_Port]:
        if specs is None:
            return [_Port(n, d, None) for n, d in details.items()]
        ports = []
        ordered = list(details.items())
        for i, spec in enumerate(specs):
            native = names.get(spec.name, spec.name)
            if native in details:
                d = details[native]
            elif len(ordered) == len(specs):
                d = ordered[i][1]  # a .tflite without matching names: by position
            else:
                raise BackendError(f"{self.path.name} has no {kind} {spec.name!r}; it has {', '.join(details)}")
            ports.append(_Port(spec.name, d, spec.perm))
        return ports

    def _caller_spec(self, port: _Port, spec: TensorSpec | None, details: _Details) -> TensorSpec:
        if spec is None:
            d = next(d for d in details.values() if int(d["index"]) == port.index)
            sig = d.get("shape_signature")
            shape = tuple("N" if int(x) < 0 and i == 0 else ("?" if int(x) < 0 else int(x)) for i, x in enumerate(sig if sig is not None else d["shape"]))
            dtype = "float32" if port.scale is not None else port.dtype.name
            return TensorSpec(port.name, dtype, shape)
        s = source_spec(spec)
        if port.scale is not None:
            s = TensorSpec(s.name, "float32", s.shape, s.layout, None)
        return s

    def run(self, feeds: Feeds) -> Feeds:
        with self._lock:
            return self._run(feeds)

    def _run(self, feeds: Feeds) -> Feeds:
        it = self.interpreter
        try:
            prepared = []
            resized = False
            for p in self._inputs:
                if p.name not in feeds:
                    raise BackendError(f"{self.path.name}: missing input {p.name!r}")
                x = np.asarray(feeds[p.name])
                if p.perm is not None:
                    x = np.transpose(x, p.perm)
                x = _quantize(x, p) if p.scale is not None else x.astype(p.dtype, copy=False)
                x = np.ascontiguousarray(x)
                if self._shapes.get(p.index) != x.shape:
                    it.resize_tensor_input(p.index, list(x.shape), strict=False)
                    self._shapes[p.index] = x.shape
                    resized = True
                prepared.append((p.index, x))
            if resized:
                it.allocate_tensors()
            for index, x in prepared:
                it.set_tensor(index, x)
            it.invoke()
            out = {}
            for p in self._outputs:
                y = it.get_tensor(p.index)
                if p.scale is not None:
                    y = (y.astype(np.float32) - p.zero_point) * np.float32(p.scale)
                out[p.name] = np.transpose(y, p.inv) if p.inv is not None else y
            return out
        except BackendError:
            raise
        except (ValueError, RuntimeError) as e:
            raise BackendError(f"LiteRT failed on {self.path.name}: {first_line(e)}") from e


@contextlib.contextmanager
def _quiet_native_info() -> Iterator[None]:
    """Drop LiteRT's native "INFO: Created TensorFlow Lite XNNPACK delegate" line; pass anything else on.

    The C++ runtime writes it to fd 2 on every interpreter and no setting turns it off.
    """
    fd = 2  # the native runtime writes to the process's fd 2, whatever sys.stderr is
    try:
        sys.stderr.flush()
        saved = os.dup(fd)
    except OSError:
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            yield
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            rest = [ln for ln in tmp.read().decode(errors="replace").splitlines(keepends=True) if not ln.startswith("INFO: ")]
            if rest:
                sys.stderr.write("".join(rest))


def _quantize(x: Array, p: _Port) -> Array:
    info = np.iinfo(p.dtype)
    q = np.round(x.astype(np.float32) / np.float32(p.scale)) + p.zero_point
    out: Array = np.clip(q, info.min, info.max).astype(p.dtype)
    return out


def _key(details: _Details, index: int) -> str:
    return next(k for k, d in details.items() if int(d["index"]) == index)
