"""What the agent measures: latency sketches, input feature summaries, Prometheus metrics.

Two views of the same events:

- :class:`Window` — one telemetry window (reset each interval): request and error counts,
  a latency sketch (p50/p95/p99/max with ≤ 1 % relative error, bounded memory) and per-feature
  counts over the manifest's reference bin edges. Published over MQTT.
- :class:`Metrics` — cumulative counters and a fixed-bucket latency histogram since start, for
  ``GET /metrics`` (Prometheus text format 0.0.4).

The request path stays cheap: it records a latency and keeps a reference to the validated
inputs; the binning runs batched, off the request path (``Window.drain``, called by the
telemetry thread), unless too much is pending, when the caller drains (back-pressure, bounded).
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

import numpy as np

from device_agent.manifest import FeatureProfile, TensorSpec
from device_agent.protocol import FeatureWindow, LatencySummary

__all__ = ["FeatureTracker", "LatencySketch", "Metrics", "Window", "select_features"]

#: inputs pending summary before the request thread summarises itself (elements, all inputs)
MAX_PENDING_ELEMENTS = 4 << 20
#: requests with more elements than this are reduced to per-feature samples on arrival
LARGE_INPUT_ELEMENTS = 16 << 10
_SIG = 6  # significant digits of floats in telemetry (keeps the payload small)


def _r(x: float | None) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.{_SIG}g}")


class LatencySketch:
    """Log-bucketed quantile sketch (DDSketch-style): relative error ≤ ``alpha``, memory bounded.

    Values ≤ ``floor`` share one bucket. With alpha = 0.01 the range 1 µs … 1 h takes < 1,100 buckets.
    """

    def __init__(self, alpha: float = 0.01, floor: float = 1e-6) -> None:
        self.alpha = alpha
        self.gamma = (1 + alpha) / (1 - alpha)
        self._lg = math.log(self.gamma)
        self.floor = floor
        self.reset()

    def reset(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.sum = 0.0
        self.max = 0.0
        self.min = math.inf

    def add(self, x: float) -> None:
        i = math.ceil(math.log(x) / self._lg) if x > self.floor else math.ceil(math.log(self.floor) / self._lg)
        self.buckets[i] = self.buckets.get(i, 0) + 1
        self.count += 1
        self.sum += x
        if x > self.max:
            self.max = x
        if x < self.min:
            self.min = x

    def quantile(self, q: float) -> float:
        """Value at quantile ``q`` (0..1); 0.0 when empty."""
        if not self.count:
            return 0.0
        rank = q * (self.count - 1)
        seen = 0
        for i in sorted(self.buckets):
            seen += self.buckets[i]
            if seen > rank:
                value = 2 * self.gamma**i / (self.gamma + 1)
                return min(max(value, self.min), self.max)
        return self.max

    def summary(self, scale: float = 1.0) -> LatencySummary | None:
        if not self.count:
            return None
        return LatencySummary(
            count=self.count, p50=_r(self.quantile(0.5) * scale), p95=_r(self.quantile(0.95) * scale),  # type: ignore[arg-type]
            p99=_r(self.quantile(0.99) * scale), max=_r(self.max * scale), mean=_r(self.sum / self.count * scale),  # type: ignore[arg-type]
        )


def select_features(features: tuple[FeatureProfile, ...], inputs: tuple[TensorSpec, ...], max_payload_bytes: int) -> tuple[list[FeatureProfile], int]:
    """The features to track (manifest order = priority) so that a window stays under the budget.

    Returns (tracked, left out). Features of unknown inputs or out-of-range axes are left out too.
    """
    by_name = {s.name: s for s in inputs}
    budget = max_payload_bytes - 1024  # envelope, latency, errors
    used, out, left = 0, [], 0
    for f in features:
        spec = by_name.get(f.input)
        if spec is None or f.axis >= max(len(spec.shape), 1) or not spec.dtype.startswith(("float", "int", "uint")):
            left += 1
            continue
        if isinstance(spec.shape[f.axis] if spec.shape else None, int) and f.index >= spec.shape[f.axis]:  # type: ignore[operator]
            left += 1
            continue
        # JSON size of one FeatureWindow: keys + 9 numbers + one per bin, generously
        cost = 120 + len(f.name) + 12 * (len(f.edges) - 1) + 4 * 14
        if used + cost > budget:
            left += 1
            continue
        used += cost
        out.append(f)
    return out, left


class FeatureTracker:
    """Per-feature bin counts and moments over the reference edges, accumulated until ``take``."""

    def __init__(self, features: list[FeatureProfile], *, max_values_per_feature: int = 1024) -> None:
        self.features = features
        self.max_values = max_values_per_feature
        self._edges = [np.asarray(f.edges, dtype=np.float64) for f in features]
        self._inputs = {f.input for f in features}
        self.reset()

    def reset(self) -> None:
        k = len(self.features)
        self.n = np.zeros(k, np.int64)
        self.nan = np.zeros(k, np.int64)
        self.under = np.zeros(k, np.int64)
        self.over = np.zeros(k, np.int64)
        self.counts = [np.zeros(len(e) - 1, np.int64) for e in self._edges]
        self.fin = np.zeros(k, np.int64)
        self.mean = np.zeros(k, np.float64)
        self.m2 = np.zeros(k, np.float64)
        self.min = np.full(k, np.inf)
        self.max = np.full(k, -np.inf)
        self.samples = 0

    def add(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Summarise a batch (source layout, sample axis first)."""
        first = next(iter(arrays.values()), None)
        if first is not None and first.ndim:
            self.samples += int(first.shape[0])
        for j, f in enumerate(self.features):
            x = arrays.get(f.input)
            if x is None:
                continue
            if x.ndim == 0:
                v = x.reshape(1)
            else:
                v = np.take(x, f.index, axis=f.axis) if x.ndim > 1 or f.axis else x
                rows = v.shape[0] if v.ndim else 1
                v = v.reshape(rows, -1)
                if v.shape[1] > self.max_values:  # large images: a fixed stride per sample
                    v = v[:, :: -(-v.shape[1] // self.max_values)]
                v = v.reshape(-1)
            self._add_values(j, v.astype(np.float64, copy=False))

    def extract(self, arrays: Mapping[str, np.ndarray]) -> list[np.ndarray | None]:
        """Per feature, the (strided) values of one request, copied: small enough to keep for later."""
        out: list[np.ndarray | None] = []
        for f in self.features:
            x = arrays.get(f.input)
            if x is None or x.ndim < 2:
                out.append(None if x is None else x.reshape(-1).copy())
                continue
            v = x[(slice(None),) * f.axis + (f.index,)]  # basic indexing: a view, no copy of the tensor
            v = v.reshape(v.shape[0], -1)
            if v.shape[1] > self.max_values:
                v = v[:, :: -(-v.shape[1] // self.max_values)]
            out.append(np.array(v, copy=True).reshape(-1))
        return out

    def add_extracted(self, batches: list[list[np.ndarray | None]], samples: int) -> None:
        """Add what :meth:`extract` returned for several requests."""
        self.samples += samples
        for j in range(len(self.features)):
            parts = [b[j] for b in batches if b[j] is not None]
            if parts:
                self._add_values(j, np.concatenate(parts).astype(np.float64, copy=False))

    def _add_values(self, j: int, v: np.ndarray) -> None:
        self.n[j] += v.size
        with np.errstate(over="ignore", invalid="ignore"):
            total = v.sum()
        fin = v if np.isfinite(total) else v[np.isfinite(v)]  # one pass when there is nothing to remove
        self.nan[j] += v.size - fin.size
        if not fin.size:
            return
        e = self._edges[j]
        # bins are [e[i], e[i+1]) except the last, which is closed (as in np.histogram); below e[0] is
        # the underflow, above e[-1] the overflow
        over = int(np.count_nonzero(fin > e[-1]))
        if len(e) <= 64:
            # few edges (the profile's ~10 quantile bins): one vectorised comparison per edge is ~10x
            # faster than a binary search per value
            ge = np.fromiter((np.count_nonzero(fin >= t) for t in e[:-1]), np.int64, len(e) - 1)
            inside = np.append(ge, over)  # ge[i] = values ≥ e[i]; the last bin ends at "> e[-1]"
            self.counts[j] += inside[:-1] - inside[1:]
            self.under[j] += fin.size - int(ge[0])
        else:
            slots = np.bincount(np.searchsorted(e, fin, side="right"), minlength=len(e) + 1)
            on_last = int(np.count_nonzero(fin == e[-1]))
            slots[-2] += on_last
            self.counts[j] += slots[1:-1]
            self.under[j] += int(slots[0])
        self.over[j] += over
        # Chan et al.'s parallel update of mean and M2 (stable for long windows)
        n_b = fin.size
        mean_b = float(fin.sum()) / n_b if fin is not v else float(total) / n_b
        d = fin - mean_b
        m2_b = float(np.square(d, out=d).sum())  # not np.dot: BLAS would wake its own threads next to ORT's
        n_a = int(self.fin[j])
        n = n_a + n_b
        delta = mean_b - self.mean[j]
        self.mean[j] += delta * n_b / n
        self.m2[j] += m2_b + delta * delta * n_a * n_b / n
        self.fin[j] = n
        self.min[j] = min(self.min[j], float(fin.min()))
        self.max[j] = max(self.max[j], float(fin.max()))

    def take(self) -> tuple[list[FeatureWindow], int]:
        """Summaries since the last take, and the number of samples they cover; then reset."""
        out = []
        for j, f in enumerate(self.features):
            has = self.fin[j] > 0
            out.append(FeatureWindow(
                name=f.name, n=int(self.n[j]), counts=[int(c) for c in self.counts[j]], under=int(self.under[j]),
                over=int(self.over[j]), nan=int(self.nan[j]),
                min=_r(float(self.min[j])) if has else None, max=_r(float(self.max[j])) if has else None,
                mean=_r(float(self.mean[j])) if has else None, std=_r(math.sqrt(self.m2[j] / self.fin[j])) if has else None,
            ))
        samples = self.samples
        self.reset()
        return out, samples


class Window:
    """One telemetry window; thread-safe. ``close()`` returns the window's content and starts the next."""

    def __init__(self, tracker: FeatureTracker | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self.tracker = tracker
        self.clock = clock
        self._lock = threading.Lock()
        # small inputs wait here per input name (plain lists of arrays: no per-request dict that the
        # garbage collector would have to walk), request i being index i of every list
        self._pending: dict[str, list[np.ndarray]] = {}
        self._pending_count = 0
        self._extracted: list[list[np.ndarray | None]] = []  # large inputs: per-feature samples taken at once
        self._extracted_samples = 0
        self._pending_elements = 0
        self._drain_lock = threading.Lock()
        self.latency = LatencySketch()
        self.start = clock()
        self.requests = 0
        self.errors: dict[str, int] = {}

    def record(self, latency_s: float | None, *, error: str | None = None) -> None:
        with self._lock:
            self.requests += 1
            if latency_s is not None:
                self.latency.add(latency_s)
            if error:
                self.errors[error] = self.errors.get(error, 0) + 1

    def observe(self, arrays: Mapping[str, np.ndarray], *, owned: bool = True) -> None:
        """Queue validated inputs for feature summaries (cheap; binning happens in ``drain``).

        Small inputs are kept whole (copied when ``owned`` is False: the caller may reuse its array);
        large ones (images) are reduced right away to each feature's strided samples, so neither
        the request nor the queue holds a copy of the tensor.
        """
        tracker = self.tracker
        if tracker is None or not tracker.features:
            return
        size = sum(a.size for a in arrays.values())
        if size > LARGE_INPUT_ELEMENTS:
            first = next(iter(arrays.values()))
            values = tracker.extract(arrays)
            with self._lock:
                self._extracted.append(values)
                self._extracted_samples += int(first.shape[0]) if first.ndim else 1
                self._pending_elements += sum(v.size for v in values if v is not None)
                full = self._pending_elements > MAX_PENDING_ELEMENTS
        else:
            with self._lock:
                pending = self._pending
                for k, v in arrays.items():
                    lst = pending.get(k)
                    if lst is None:
                        lst = pending[k] = [None] * self._pending_count  # an input first seen now
                    lst.append(v if owned else v.copy())
                self._pending_count += 1
                for lst in pending.values():
                    if len(lst) < self._pending_count:  # an input absent from this request
                        lst.append(None)
                self._pending_elements += size
                full = self._pending_elements > MAX_PENDING_ELEMENTS
        if full:
            self.drain()

    def drain(self) -> None:
        """Bin everything pending. Runs off the request path; the request lock is held only to
        swap the queue, never while binning (tracker state is guarded by the drain lock)."""
        if self.tracker is None:
            return
        with self._drain_lock:
            self._drain_locked()

    def _drain_locked(self) -> None:
        tracker = self.tracker
        with self._lock:
            pending, count = self._pending, self._pending_count
            self._pending, self._pending_count, self._pending_elements = {}, 0, 0
            extracted, self._extracted = self._extracted, []
            extracted_samples, self._extracted_samples = self._extracted_samples, 0
        if extracted:
            tracker.add_extracted(extracted, extracted_samples)
        if not count:
            return
        try:  # the usual case: every request has the same non-batch shape, so one concatenate per input
            batch = {k: np.concatenate(lst) for k, lst in pending.items()}
        except (ValueError, TypeError):  # differing shapes (symbolic dims), scalars or absent inputs: one by one
            for i in range(count):
                tracker.add({k: lst[i] for k, lst in pending.items() if lst[i] is not None})
            return
        tracker.add(batch)

    def close(self) -> dict[str, Any]:
        """Drain, snapshot and reset. Returns the fields of a TelemetryMessage (without envelope)."""
        with self._drain_lock:
            if self.tracker is not None:
                self._drain_locked()
            features, samples = self.tracker.take() if self.tracker else ([], 0)
            with self._lock:
                end = self.clock()
                out = {
                    "window": {"start": round(self.start, 3), "end": round(end, 3)},
                    "requests": self.requests,
                    "errors": dict(self.errors),
                    "latency_ms": self.latency.summary(scale=1000.0),
                    "features": features,
                    "samples": samples,
                }
                self.start = end
                self.requests = 0
                self.errors = {}
                self.latency.reset()
        return out


# --- Prometheus ----------------------------------------------------------------------------------

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Cumulative counters for ``/metrics``; gauges are read from callbacks at scrape time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.time()
        self.predictions = 0
        self.samples = 0
        self.errors: dict[str, int] = {}
        self.http: dict[tuple[str, str, int], int] = {}
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.latency_count = 0
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}
        self.info: Callable[[], dict[str, str]] = dict

    def prediction(self, latency_s: float, samples: int) -> None:
        with self._lock:
            self.predictions += 1
            self.samples += samples
            self.latency_sum += latency_s
            self.latency_count += 1
            self.buckets[bisect.bisect_left(LATENCY_BUCKETS, latency_s)] += 1

    def error(self, kind: str) -> None:
        with self._lock:
            self.errors[kind] = self.errors.get(kind, 0) + 1

    def http_request(self, method: str, path: str, code: int) -> None:
        with self._lock:
            key = (method, path, code)
            self.http[key] = self.http.get(key, 0) + 1

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self.gauges[name] = (help_text, read)

    def render(self) -> str:
        """Prometheus text exposition format."""
        with self._lock:
            lines = [
                "# HELP edgekit_agent_predictions_total Prediction requests answered.",
                "# TYPE edgekit_agent_predictions_total counter",
                f"edgekit_agent_predictions_total {self.predictions}",
                "# HELP edgekit_agent_prediction_samples_total Samples (batch rows) predicted.",
                "# TYPE edgekit_agent_prediction_samples_total counter",
                f"edgekit_agent_prediction_samples_total {self.samples}",
                "# HELP edgekit_agent_errors_total Rejected or failed prediction requests by kind.",
                "# TYPE edgekit_agent_errors_total counter",
            ]
            lines += [f'edgekit_agent_errors_total{{kind="{_esc(k)}"}} {v}' for k, v in sorted(self.errors.items())]
            lines += ["# HELP edgekit_agent_http_requests_total HTTP requests by method, route and status code.",
                      "# TYPE edgekit_agent_http_requests_total counter"]
            lines += [f'edgekit_agent_http_requests_total{{method="{m}",path="{_esc(p)}",code="{c}"}} {v}'
                      for (m, p, c), v in sorted(self.http.items())]
            lines += ["# HELP edgekit_agent_inference_seconds Inference latency (runtime only).",
                      "# TYPE edgekit_agent_inference_seconds histogram"]
            cum = 0
            for b, n in zip(LATENCY_BUCKETS, self.buckets, strict=False):
                cum += n
                lines.append(f'edgekit_agent_inference_seconds_bucket{{le="{b}"}} {cum}')
            lines.append(f'edgekit_agent_inference_seconds_bucket{{le="+Inf"}} {self.latency_count}')
            lines.append(f"edgekit_agent_inference_seconds_sum {self.latency_sum:.9f}")
            lines.append(f"edgekit_agent_inference_seconds_count {self.latency_count}")
        info = self.info()
        if info:
            labels = ",".join(f'{k}="{_esc(str(v))}"' for k, v in info.items())
            lines += ["# HELP edgekit_agent_model_info The model being served.", "# TYPE edgekit_agent_model_info gauge",
                      f"edgekit_agent_model_info{{{labels}}} 1"]
        lines += ["# HELP edgekit_agent_start_time_seconds Agent start, unix time.", "# TYPE edgekit_agent_start_time_seconds gauge",
                  f"edgekit_agent_start_time_seconds {self.started:.3f}"]
        for name, (help_text, read) in sorted(self.gauges.items()):
            try:
                value = float(read())
            except Exception:  # a gauge must never break the scrape
                value = math.nan
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value:g}"]
        return "\n".join(lines) + "\n"

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"predictions": self.predictions, "samples": self.samples, "errors": dict(self.errors)}


def _esc(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def feature_dicts(features: list[FeatureWindow]) -> list[dict[str, Any]]:
    return [asdict(f) for f in features]
