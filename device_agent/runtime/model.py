"""The served model: a manifest directory (or a bare model file), the artifact picked for this
device, its backend (loaded once, :func:`open_backend` by file format), and the result of the
start-up self-test.

Artifact choice: the configured file if any; else the first format in ``prefer`` (default
``ort, onnx, tflite``) that the manifest lists, whose file is present and whose runtime is
installed (``.tflite`` needs ai-edge-litert), and that this CPU can run (an ``.ort`` built with
``--ort-target amd64`` only on x86-64). Only the chosen artifact is read and hashed.

Runtime check: the runtime that runs the chosen artifact is compared with the one the manifest says
it was validated with (:func:`~device_agent.runtime.compat.check_runtime`); another minor release
runs the self-test even when it is switched off, and a model the policy refuses is loaded but unfit
to serve (:attr:`LoadedModel.unfit_reason`).
"""

from __future__ import annotations

import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from device_agent.contract.errors import ModelError
from device_agent.contract.manifest import Artifact, Manifest, ManifestError, TensorSpec, file_sha256, load_manifest
from device_agent.contract.runtimes import RuntimeCheck, RuntimeStatus
from device_agent.contract.types import Array, Feeds, JsonDict
from device_agent.runtime.base import Backend, BackendError, default_threads, litert_available
from device_agent.runtime.compat import RuntimePolicy, check_runtime
from device_agent.runtime.ort import OrtBackend

__all__ = ["LoadedModel", "SelfTest", "load_model", "open_backend", "select_artifact", "top_k"]

_FORMAT_OF_SUFFIX = {".onnx": "onnx", ".ort": "ort", ".tflite": "tflite"}
Formats = tuple[str, ...] | list[str]


def open_backend(path: str | Path, artifact: Artifact | None = None, *, threads: int = 1) -> Backend:
    """Open the right backend for a file by its format (``.onnx``/``.ort`` → ORT, ``.tflite`` → LiteRT)."""
    p = Path(path)
    if p.suffix in (".onnx", ".ort"):
        return OrtBackend(p, artifact, threads=threads)
    if p.suffix == ".tflite":
        from device_agent.runtime.litert import LiteRTBackend  # LiteRT is optional on the device

        return LiteRTBackend(p, artifact, threads=threads)
    raise BackendError(f"{p.name}: unknown model format {p.suffix!r}; expected .onnx, .ort or .tflite")


@dataclass(frozen=True)
class SelfTest:
    """Outcome of running the manifest's self-test vectors through the loaded backend."""

    passed: bool
    vectors: int
    max_abs_error: float = 0.0
    detail: str = ""
    seconds: float = 0.0

    def to_dict(self) -> JsonDict:
        return {"passed": self.passed, "vectors": self.vectors, "max_abs_error": self.max_abs_error, "detail": self.detail,
                "seconds": round(self.seconds, 4)}


@dataclass
class LoadedModel:
    """Everything the agent needs to serve one model. ``inputs``/``outputs`` are the source layout."""

    path: Path
    name: str
    version: str
    task: str
    labels: tuple[str, ...] | None
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    backend: Backend
    artifact: Artifact | None = None
    manifest: Manifest | None = None
    load_seconds: float = 0.0
    selftest: SelfTest = field(default_factory=lambda: SelfTest(True, 0, detail="not run"))
    runtime_check: RuntimeCheck = field(default_factory=lambda: RuntimeCheck("", "", None, None, RuntimeStatus.UNKNOWN, detail="not checked"))

    @property
    def file(self) -> Path:
        return self.backend.path

    @property
    def unfit_reason(self) -> str | None:
        """Why this model must not serve (its runtime is refused, or its self-test failed); None when it may."""
        if self.runtime_check.refused:
            return f"runtime mismatch: {self.runtime_check.detail}"
        if not self.selftest.passed:
            return f"self-test failed: {self.selftest.detail}"
        return None

    @property
    def is_classifier(self) -> bool:
        return self.task == "classification"

    def summary(self) -> JsonDict:
        """Short identity for state messages and responses."""
        return {
            "name": self.name,
            "version": self.version,
            "artifact": self.file.name,
            "format": self.artifact.format if self.artifact else _FORMAT_OF_SUFFIX.get(self.file.suffix, "?"),
            "precision": self.artifact.precision if self.artifact else None,
            "runtime": self.backend.runtime,
        }

    def run(self, feeds: Feeds) -> Feeds:
        return self.backend.run(feeds)

    def run_selftest(self) -> SelfTest:
        """Run every self-test vector for the chosen artifact; compare with its tolerance."""
        self.selftest = _selftest(self)
        return self.selftest


def select_artifact(manifest: Manifest, directory: Path, *, prefer: Formats = ("ort", "onnx", "tflite"),
                    file: str | None = None) -> Artifact:
    """Pick the artifact to serve; the error lists what the manifest has and why each was skipped."""
    if file:
        art = manifest.artifact(file)
        if not (directory / art.file).is_file():
            raise ModelError(f"the configured artifact {file!r} is listed in the manifest but missing from {directory}")
        return art
    skipped = []
    for fmt in prefer:
        for art in manifest.artifacts:
            if art.format != fmt:
                continue
            if not (directory / art.file).is_file():
                skipped.append(f"{art.file} (file missing)")
                continue
            if fmt == "ort" and art.extra.get("ort_target") == "amd64" and not _x86_64():
                skipped.append(f"{art.file} (built with --ort-target amd64: its NCHWc kernels exist only on x86-64, "
                               f"this CPU is {platform.machine() or 'unknown'}; rebuild with --ort-target arm)")
                continue
            if fmt == "tflite" and not litert_available():
                skipped.append(f"{art.file} (ai-edge-litert is not installed: pip install ai-edge-litert)")
                continue
            return art
    have = ", ".join(f"{a.file} ({a.format})" for a in manifest.artifacts) or "none"
    why = f"; skipped: {'; '.join(skipped)}" if skipped else ""
    raise ModelError(f"no artifact of format {', '.join(prefer)} is usable in {directory}; the manifest lists: {have}{why}")


def _x86_64() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def load_model(path: str | Path, *, prefer: Formats = ("ort", "onnx", "tflite"), threads: int = 0, artifact: str | None = None,
               verify: bool = True, selftest: bool = True, runtime_policy: RuntimePolicy | None = None) -> LoadedModel:
    """Load a model directory (``edgekit.json`` + artifacts) or a bare ``.onnx``/``.ort``/``.tflite`` file.

    Args:
        path: the directory or file.
        prefer: artifact formats in order of preference.
        threads: inference threads (0: ``min(4, cpus)``).
        artifact: serve this artifact file instead of choosing by format.
        verify: check the chosen artifact's size and sha256 against the manifest.
        selftest: run the manifest's self-test vectors (the result is in ``.selftest``; a failure
            does not raise — the agent reports "not ready" and says why). A runtime another minor
            release away from the validated one runs them regardless.
        runtime_policy: what a runtime too far from the validated one means (``.runtime_check``;
            default: warn). A refused model is returned, unfit to serve (``.unfit_reason``).

    Raises:
        ModelError: the directory/file is not a loadable model.
    """
    p = Path(path)
    t0 = time.perf_counter()
    n_threads = threads or default_threads()
    try:
        if p.is_dir():
            model = _load_dir(p, prefer, n_threads, artifact, verify)
        elif p.is_file():
            model = _load_file(p, n_threads)
        else:
            raise ModelError(f"model path {p} does not exist")
    except (ManifestError, BackendError) as e:
        raise ModelError(str(e)) from e
    model.load_seconds = time.perf_counter() - t0
    model.runtime_check = check_runtime(model.manifest, model.artifact, runtime=model.backend.runtime, policy=runtime_policy)
    if selftest or model.runtime_check.differs:
        model.run_selftest()
    return model


def _load_dir(p: Path, prefer: Formats, threads: int, artifact: str | None, verify: bool) -> LoadedModel:
    manifest = load_manifest(p)
    art = select_artifact(manifest, p, prefer=prefer, file=artifact)
    f = p / art.file
    if verify:
        size = f.stat().st_size
        if size != art.size_bytes:
            raise ModelError(f"artifact {art.file} is {size} bytes; the manifest says {art.size_bytes} (truncated or replaced?)")
        if file_sha256(f) != art.sha256:
            raise ModelError(f"artifact {art.file} does not match its sha256 in the manifest (modified or corrupt)")
    backend = open_backend(f, art, threads=threads)
    return LoadedModel(
        path=p, name=manifest.name, version=manifest.version, task=manifest.task, labels=manifest.labels,
        inputs=manifest.inputs, outputs=manifest.outputs, backend=backend, artifact=art, manifest=manifest,
    )


def _load_file(p: Path, threads: int) -> LoadedModel:
    if p.suffix not in _FORMAT_OF_SUFFIX:
        raise ModelError(f"{p.name}: unknown model format {p.suffix!r}; expected a model directory, .onnx, .ort or .tflite")
    backend = open_backend(p, None, threads=threads)
    outs = backend.outputs
    # no manifest: a single [N, C] float output is taken for class scores (labels are indices)
    classifier = len(outs) == 1 and len(outs[0].shape) == 2 and outs[0].dtype.startswith("float") and isinstance(outs[0].shape[1], int) \
        and outs[0].shape[1] >= 2
    return LoadedModel(
        path=p, name=p.stem, version="unversioned", task="classification" if classifier else "generic", labels=None,
        inputs=backend.inputs, outputs=backend.outputs, backend=backend,
    )


def _selftest(model: LoadedModel) -> SelfTest:
    if model.manifest is None or model.artifact is None:
        return SelfTest(True, 0, detail="no manifest: nothing to compare against")
    t0 = time.perf_counter()
    vectors = model.manifest.selftest_vectors(model.artifact.file)
    if not vectors:
        return SelfTest(True, 0, detail=f"the manifest has no self-test vectors for {model.artifact.file}")
    tol = model.manifest.selftest_tolerance(model.artifact.file)
    worst = 0.0
    for i, (inputs, expected) in enumerate(vectors):
        try:
            got = model.backend.run(inputs)
        except BackendError as e:
            return SelfTest(False, len(vectors), detail=f"vector {i}: the runtime failed: {e}", seconds=time.perf_counter() - t0)
        for name, want in expected.items():
            y = got.get(name)
            if y is None or y.shape != want.shape:
                shape = None if y is None else list(y.shape)
                return SelfTest(False, len(vectors), detail=f"vector {i}: output {name!r} has shape {shape}, expected {list(want.shape)}",
                                seconds=time.perf_counter() - t0)
            if want.dtype.kind in "OUS":  # class labels: exactly the expected strings
                if not np.array_equal(y.astype(str), want.astype(str)):
                    return SelfTest(False, len(vectors), worst, f"vector {i}: output {name!r} is {y.reshape(-1)[:4].tolist()}, expected "
                                    f"{want.reshape(-1)[:4].tolist()}", time.perf_counter() - t0)
                continue
            err = float(np.max(np.abs(y.astype(np.float64) - want.astype(np.float64)))) if y.size else 0.0
            worst = max(worst, err)
            if not np.allclose(y, want, atol=tol["atol"], rtol=tol["rtol"], equal_nan=True):
                return SelfTest(
                    False, len(vectors), worst,
                    f"vector {i}: output {name!r} differs from the expected values by up to {err:.3g} "
                    f"(tolerance atol={tol['atol']:.3g}, rtol={tol['rtol']:.3g}); this device computes a different result "
                    "than the one the model was built with",
                    time.perf_counter() - t0,
                )
    return SelfTest(True, len(vectors), worst, f"{len(vectors)} vector(s) within tolerance", time.perf_counter() - t0)


#: classes up to which one row's top-k is computed in plain Python
_SMALL = 64


def _top_k_row(row: list[float], k: int, labels: tuple[str, ...] | None) -> list[JsonDict]:
    """:func:`top_k` of one finite row, as numpy would compute it (softmax in float64, stable order)."""
    probs = row
    top = max(row)
    if not (top <= 1 and min(row) >= 0 and abs(sum(row) - 1.0) <= 1e-3 + 1e-5):
        e = [math.exp(v - top) for v in row]
        total = sum(e)
        probs = [v / total for v in e]
    # sorted() is stable, reverse=True included: ties keep index order, like a stable argsort of -probs
    best = sorted(range(len(probs)), key=probs.__getitem__, reverse=True)[:k]
    if labels:
        n = len(labels)
        return [{"index": i, "label": labels[i] if i < n else str(i), "score": round(probs[i], 6)} for i in best]
    return [{"index": i, "label": str(i), "score": round(probs[i], 6)} for i in best]


def top_k(scores: Array, k: int, labels: tuple[str, ...] | None) -> list[list[JsonDict]]:
    """Top-k classes per sample of a [N, C] score array: ``[{index, label, score}]``, best first.

    Scores that are not already probabilities (rows in [0, 1] summing to 1) go through softmax.
    """
    if scores.size <= _SMALL and (scores.ndim == 1 or (scores.ndim == 2 and scores.shape[0] == 1)):
        values = scores.reshape(-1).tolist()  # Python floats (a float array: the callers pass class scores)
        # one small row (digits, tabular): plain Python is ~5x faster than numpy's calls. A NaN or an inf makes the sum
        # non-finite (so does an overflow of huge values): those rows take numpy's path
        if values and math.isfinite(sum(values)):
            return [_top_k_row(values, k, labels)]
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 1:
        s = s[None]
    s = s.reshape(s.shape[0], -1)
    probs = s
    # np.allclose(sums, 1, atol=1e-3) spelled out: allclose alone costs more than the softmax
    if not (s.min() >= 0 and s.max() <= 1 and bool((np.abs(s.sum(axis=1) - 1.0) <= 1e-3 + 1e-5).all())):
        with np.errstate(invalid="ignore"):  # a model's inf output gives NaN scores, as before, without a warning per request
            e = np.exp(s - s.max(axis=1, keepdims=True))
            probs = e / e.sum(axis=1, keepdims=True)
    k = min(k, s.shape[1])
    if k < s.shape[1] // 8:  # many classes (ImageNet): partition first, sort only the k best
        part = np.argpartition(-probs, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(probs, part, axis=1), axis=1, kind="stable")
        idx = np.take_along_axis(part, order, axis=1)
    else:
        idx = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    out = []
    for row, ids in zip(probs, idx, strict=True):
        out.append([
            {"index": int(i), "label": labels[i] if labels and i < len(labels) else str(int(i)), "score": round(float(row[i]), 6)}
            for i in ids
        ])
    return out
