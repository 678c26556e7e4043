"""Prometheus metrics for ``GET /metrics``: cumulative counters, a latency histogram, gauges read at scrape time."""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Callable

__all__ = ["FOLD_EVERY", "LATENCY_BUCKETS", "Metrics"]

#: requests recorded before the request that reaches this many folds them into the counters (~0.15 µs a request
#: either way; 64 at a time is a ~15 µs step where 1,024 were a 0.2 ms stall on every thousandth request)
FOLD_EVERY = 64

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
        #: labelled series rendered at scrape time: (name, help, read → {label value: count}), label name first
        self.counters: dict[str, tuple[str, str, Callable[[], dict[str, int]]]] = {}
        self._pending: list[tuple[float, int]] = []  # (latency, samples) of requests not folded in yet

    def prediction(self, latency_s: float, samples: int) -> None:
        """Count one answered request. The request path only appends to a list (atomic under the GIL, and
        under free-threaded CPython's per-list lock); the counters are folded in at scrape time or every
        :data:`FOLD_EVERY` requests, so a small model's request pays no lock and no bucket search here."""
        pending = self._pending
        pending.append((latency_s, samples))
        if len(pending) >= FOLD_EVERY:
            with self._lock:
                self._fold()

    def _fold(self) -> None:
        """Fold the pending requests into the counters (caller holds ``_lock``). Only the first ``n`` items
        are taken and deleted: a request appended meanwhile stays for the next fold."""
        pending = self._pending
        n = len(pending)
        if not n:
            return
        taken = pending[:n]
        del pending[:n]
        buckets = self.buckets
        for latency_s, samples in taken:
            self.samples += samples
            self.latency_sum += latency_s
            buckets[bisect.bisect_left(LATENCY_BUCKETS, latency_s)] += 1
        self.predictions += n
        self.latency_count += n

    def error(self, kind: str) -> None:
        with self._lock:
            self.errors[kind] = self.errors.get(kind, 0) + 1

    def http_request(self, method: str, path: str, code: int) -> None:
        with self._lock:
            key = (method, path, code)
            self.http[key] = self.http.get(key, 0) + 1

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self.gauges[name] = (help_text, read)

    def counter(self, name: str, help_text: str, label: str, read: Callable[[], dict[str, int]]) -> None:
        """A counter family with one label (values from a closed set, e.g. the model's field names), read at scrape time."""
        self.counters[name] = (help_text, label, read)

    def render(self) -> str:
        """Prometheus text exposition format."""
        with self._lock:
            self._fold()
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
        for name, (help_text, label, read_counts) in sorted(self.counters.items()):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
            lines += [f'{name}{{{label}="{_esc(k)}"}} {v}' for k, v in sorted(read_counts().items())]
        for name, (help_text, read) in sorted(self.gauges.items()):
            try:
                value = float(read())
            except Exception:  # a gauge must never break the scrape
                value = math.nan
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value:g}"]
        return "\n".join(lines) + "\n"

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            self._fold()
            return {"predictions": self.predictions, "samples": self.samples, "errors": dict(self.errors)}


def _esc(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

