"""Evaluate a model artifact: outputs over a dataset, latency on this CPU, quality against a reference.

Every artifact is run through the device agent's backends (``device_agent.runtime``), so what
edgekit measures is what the device will run, layout conversion included.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from device_agent.contract.manifest import TensorSpec
from device_agent.runtime import Backend
from edgekit.data import Dataset
from edgekit.signature import batch_size, fixed_batch, is_fixed

__all__ = ["PARITY", "PARITY_COSINE", "Latency", "Quality", "compare", "is_classifier", "measure_latencies", "measure_latency", "parity",
           "run_dataset"]

MAX_EVAL_BATCH = 32


def run_dataset(backend: Backend, data: Dataset, specs: tuple[TensorSpec, ...], *, progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """Outputs for every sample of ``data`` (source layout), concatenated along axis 0.

    ``specs`` is the source signature (decides batching: :func:`edgekit.signature.batch_size`). A
    fixed batch size b is honoured by padding the last batch on each input's batch axis, so
    fixed-batch models see exactly what they were exported for.
    """
    b = batch_size(specs, MAX_EVAL_BATCH)
    padded = {s.name for s in specs if _fixed_on_batch_axis(s, data)}
    chunks: dict[str, list[np.ndarray]] = {}
    for start in range(0, data.n, b):
        count = min(b, data.n - start)
        feeds = data.take(start, b)
        if count < b:
            feeds = {k: _pad(v, data.sample_axis(k), b) if k in padded else v for k, v in feeds.items()}
        out = backend.run(feeds)
        for k, y in out.items():
            # only a padded batch is cut back: an output without a batch axis first (a state [2, N, 128]) stays whole
            chunks.setdefault(k, []).append(y[:count] if count < b and y.ndim and y.shape[0] >= count else y)
        if progress:
            progress(count)
    return {k: np.concatenate(v) if v[0].ndim else np.stack(v) for k, v in chunks.items()}


def _fixed_on_batch_axis(s: TensorSpec, data: Dataset) -> bool:
    axis = data.axes.get(s.name, 0)
    return axis is not None and len(s.shape) > axis and is_fixed(s.shape[axis])


def _pad(x: np.ndarray, axis: int, size: int) -> np.ndarray:
    """``x`` with its last sample repeated up to ``size`` samples on ``axis``."""
    last = np.take(x, [-1], axis=axis)
    return np.concatenate([x, np.repeat(last, size - x.shape[axis], axis=axis)], axis=axis)


def one_sample(data: Dataset, specs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
    """A single request as the model takes it (batch 1, or the fixed batch)."""
    return data.take(0, fixed_batch(specs) or 1)


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p95_ms: float
    mean_ms: float
    runs: int

    def to_dict(self) -> dict:
        return {"p50_ms": round(self.p50_ms, 6), "p95_ms": round(self.p95_ms, 6), "mean_ms": round(self.mean_ms, 6), "runs": self.runs}  # to the ns: a µs model's choice can be re-derived from the record


def measure_latency(
    backend: Backend, feeds: dict[str, np.ndarray], *, runs: int = 200, warmup: int = 10, budget_s: float = 10.0, min_runs: int = 20
) -> Latency:
    """Wall-clock latency of ``backend.run(feeds)``: warm up, then up to ``runs`` timed calls.

    Stops early once ``budget_s`` is spent (after at least ``min_runs``), so a slow model cannot
    stall a search. GC is paused while timing so it does not land inside one call.
    """
    for _ in range(warmup):
        backend.run(feeds)
    times = []
    gc_was = gc.isenabled()
    gc.disable()
    try:
        deadline = time.perf_counter() + budget_s
        for i in range(runs):
            t0 = time.perf_counter()
            backend.run(feeds)
            times.append(time.perf_counter() - t0)
            if i + 1 >= min_runs and time.perf_counter() > deadline:
                break
    finally:
        if gc_was:
            gc.enable()
    ms = np.array(times) * 1e3
    return Latency(float(np.percentile(ms, 50)), float(np.percentile(ms, 95)), float(ms.mean()), len(ms))


def measure_latencies(
    backends: dict[str, tuple[Backend, dict[str, np.ndarray]]], *, runs: int = 200, warmup: int = 10, budget_s: float = 30.0,
    min_runs: int = 20,
) -> dict[str, Latency]:
    """Latency of several backends measured round-robin: one call each per round.

    On a shared CPU, load comes and goes; interleaving makes every model see the same load, so
    their *ratios* hold even when absolute numbers drift. Stops after ``budget_s`` (≥ ``min_runs``).
    """
    for backend, feeds in backends.values():
        for _ in range(warmup):
            backend.run(feeds)
    times: dict[str, list[float]] = {k: [] for k in backends}
    gc_was = gc.isenabled()
    gc.disable()
    try:
        deadline = time.perf_counter() + budget_s
        for i in range(runs):
            for name, (backend, feeds) in backends.items():
                t0 = time.perf_counter()
                backend.run(feeds)
                times[name].append(time.perf_counter() - t0)
            if i + 1 >= min_runs and time.perf_counter() > deadline:
                break
    finally:
        if gc_was:
            gc.enable()
    out = {}
    for name, t in times.items():
        ms = np.array(t) * 1e3
        out[name] = Latency(float(np.percentile(ms, 50)), float(np.percentile(ms, 95)), float(ms.mean()), len(ms))
    return out


def is_classifier(outputs: tuple[TensorSpec, ...]) -> bool:
    """A first output of shape [N, C] (C ≥ 2, float) is read as class scores."""
    if not outputs:
        return False
    s = outputs[0]
    return len(s.shape) == 2 and s.dtype.startswith("float") and (not isinstance(s.shape[1], int) or s.shape[1] >= 2)


@dataclass(frozen=True)
class Quality:
    """How close a model's outputs are to a reference's; ``drop`` is in points (lower is better).

    ``drop`` is the accuracy loss with labels, the top-1 disagreement (%) for classifiers without
    labels, and ``(1 - cosine) * 100`` for other outputs and for generated inputs: one number to
    hold against --max-drop.
    """

    accuracy: float | None
    agreement: float | None
    cosine: float
    max_abs_error: float
    drop: float

    def to_dict(self) -> dict:
        d = {"cosine": round(self.cosine, 6), "max_abs_error": float(f"{self.max_abs_error:.6g}"), "drop_pts": round(self.drop, 4)}
        if self.accuracy is not None:
            d["accuracy"] = round(self.accuracy, 4)
        if self.agreement is not None:
            d["agreement"] = round(self.agreement, 4)
        return d


def accuracy(outputs: dict[str, np.ndarray], first: str, labels: np.ndarray) -> float:
    return float((outputs[first].argmax(axis=1) == labels).mean() * 100)


def compare(
    ref: dict[str, np.ndarray],
    new: dict[str, np.ndarray],
    *,
    classifier: bool,
    first_output: str,
    labels: np.ndarray | None = None,
    ref_accuracy: float | None = None,
    generated: bool = False,
) -> Quality:
    """Quality of ``new`` against ``ref``.

    On ``generated`` inputs (no user data) top-1 agreement is reported but not judged: random
    inputs sit far from the training distribution, where logits nearly tie and a flip says little
    about the model; the output cosine is the judge there.
    """
    cos, mae = 1.0, 0.0
    for name, r in ref.items():
        n = new[name]
        if r.dtype.kind in "OUS":  # class labels as strings: decided by the scores compared below
            continue
        if not np.issubdtype(r.dtype, np.floating):
            mae = max(mae, float(np.abs(r.astype(np.float64) - n.astype(np.float64)).max(initial=0.0)))
            continue
        r64, n64 = r.astype(np.float64), n.astype(np.float64)
        if not np.all(np.isfinite(n64)):
            return Quality(None, 0.0, 0.0, float("inf"), 100.0)
        mae = max(mae, float(np.abs(r64 - n64).max(initial=0.0)))
        # per-sample cosine; outputs with few values per sample (regressors) compare as one vector
        per_sample = r64.ndim > 1 and r64[0].size >= 8
        rr = r64.reshape(len(r64), -1) if per_sample else r64.reshape(1, -1)
        nn = n64.reshape(len(n64), -1) if per_sample else n64.reshape(1, -1)
        r_norm, n_norm = np.linalg.norm(rr, axis=1), np.linalg.norm(nn, axis=1)
        denom = r_norm * n_norm
        # a zero vector has no direction: it matches only another zero vector (a model that collapsed to zeros is not perfect)
        c = np.where(denom > 0, (rr * nn).sum(axis=1) / np.maximum(denom, 1e-30), np.where((r_norm == 0) & (n_norm == 0), 1.0, 0.0))
        cos = min(cos, float(c.mean()))
    acc = agree = None
    if classifier:
        agree = float((ref[first_output].argmax(axis=1) == new[first_output].argmax(axis=1)).mean() * 100)
    if labels is not None and classifier:
        acc = accuracy(new, first_output, labels)
        base = ref_accuracy if ref_accuracy is not None else accuracy(ref, first_output, labels)
        drop = base - acc
    elif agree is not None and not generated:
        drop = 100.0 - agree
    else:
        drop = (1.0 - cos) * 100.0
    return Quality(acc, agree, cos, mae, drop)


#: parity between an artifact and the model it was converted from (same precision, other runtime/format):
#: largest absolute error, relative to max(1, |output|)...
PARITY = {"fp32": 1e-3, "fp16": 2e-2, "int8": 5e-2, "mixed": 5e-2}
#: ...and the least cosine similarity of its outputs with that model's, whatever their scale
PARITY_COSINE = {"fp32": 0.9999, "fp16": 0.999, "int8": 0.98, "mixed": 0.98}


#: int8 parity of a dense output: at least this share (%) of its elements within the allowed error (the cosine still holds)
PARITY_WITHIN = 99.9


def parity(ref: dict[str, np.ndarray], new: dict[str, np.ndarray], precision: str, *, tolerance: float | None = None,
           classifier: bool = False, first_output: str | None = None) -> dict:
    """Whether ``new`` computes what ``ref`` does, for an artifact of ``precision`` converted from ``ref``'s model.

    The worst output's max abs error must be within ``PARITY[precision]`` × max(1, |output|), or within
    ``tolerance`` when the exporter knows a wider one is due (an int8 .tflite, calibrated by another
    quantizer, checked against the float model); a classifier whose top-1 decisions agree on ≥ 99 % of
    samples passes that test too (int8 kernels differ a little per layout and fusion, decisions must
    not); so does an int8 artifact whose worst output has ≥ ``PARITY_WITHIN`` % of its elements within the bound
    (a detector's map, where a few pixels on a steep sigmoid round apart). In every case the outputs' cosine similarity must reach ``PARITY_COSINE[precision]``: a
    bound that scales with |output| would let tiny outputs pass anything.
    """
    worst, worst_err, worst_scale = None, 0.0, 1.0
    for k, r in ref.items():
        if r.dtype.kind in "OUS":  # string labels follow the scores; a mismatch shows there as agreement
            continue
        err = float(np.abs(r.astype(np.float64) - new[k].astype(np.float64)).max(initial=0.0))
        scale = max(1.0, float(np.abs(r).max(initial=0.0)))
        if worst is None or err / scale > worst_err / worst_scale:
            worst, worst_err, worst_scale = k, err, scale
    allowed = max(PARITY.get(precision, 5e-2) * worst_scale, tolerance or 0.0)
    agreement = None
    ok = worst_err <= allowed
    if classifier and first_output is not None:
        agreement = float((ref[first_output].argmax(1) == new[first_output].argmax(1)).mean() * 100)
        ok = ok or agreement >= 99.0
    within = None
    if precision in ("int8", "mixed") and worst is not None and not ok:
        # a dense output (a detector's probability map) of two int8 kernels that round differently: a few elements on a
        # steep sigmoid land far apart while the map agrees; the elementwise share is to a map what top-1 is to scores
        r = ref[worst].astype(np.float64)
        within = float((np.abs(r - new[worst].astype(np.float64)) <= allowed).mean() * 100)
        ok = within >= PARITY_WITHIN
    cosine = min((_cosine(r, new[k]) for k, r in ref.items() if np.issubdtype(r.dtype, np.floating)), default=1.0)
    ok = ok and cosine >= PARITY_COSINE.get(precision, 0.98)
    return {"worst_output": worst, "max_abs_error": worst_err, "allowed": allowed, "agreement": agreement,
            **({"within_share": round(within, 4)} if within is not None else {}), "cosine": round(cosine, 6), "ok": bool(ok)}


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    x, y = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    denom = np.linalg.norm(x) * np.linalg.norm(y)
    if denom == 0:
        return 1.0 if not x.any() and not y.any() else 0.0
    return float(x @ y / denom)
