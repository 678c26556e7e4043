"""``/metrics`` for Prometheus: the fleet as the collector's store has it, read when scraped.

``edgekit fleet watch --metrics-port 9464`` serves it (127.0.0.1 unless ``--metrics-host``). There
are no metric objects per message or per device: :class:`FleetMetrics` is a custom
``prometheus_client`` collector that, at scrape time, asks the store a few aggregate queries
(:class:`~edgekit.monitor.store.census.FleetCensus`, the groups' hourly roll-ups, the rollouts) and
this process's counters. Labels are bounded by the fleet's shape, never by its size: group x model
version x feature at most (devices are counted, never labelled).

Store-wide metrics (devices, drift, accuracy, latency, rollouts, alerts) are the same from every
collector of one store: scrape one of them, or aggregate with ``max by``. Per-process metrics
(messages, errors, inbox, ingest lag) are each collector's own, labelled ``collector``.

Metrics (``edgekit_`` prefix): see :data:`NAMES`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from edgekit.errors import InputError
from edgekit.monitor.store import ACCURACY, FleetStore, Totals

__all__ = ["LEVELS", "NAMES", "FleetMetrics", "MetricsServer", "serve_metrics"]

#: drift and accuracy levels as numbers (a gauge): higher is worse; not enough data is below ok
LEVELS = {"not_enough_data": -1.0, "ok": 0.0, "warn": 1.0, "alert": 2.0}
#: rollouts exported (newest first): each adds a job label value
ROLLOUTS = 20
#: the span the groups' recent accuracy, latency and requests cover: the current and the previous clock hour
RECENT_S = 3600

# name -> (type, help, labels)
NAMES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "edgekit_devices": ("gauge", "Devices per group, model version and status (online, offline, unknown).",
                        ("group", "model", "version", "status")),
    "edgekit_devices_by_runtime": ("gauge", "Devices per group, agent version, runtime and runtime check status (issue 19).",
                                   ("group", "agent_version", "runtime", "runtime_status")),
    "edgekit_drift_psi": ("gauge", "The group's PSI per feature on one model version, as last judged.", ("group", "model", "version", "feature")),
    "edgekit_drift_level": ("gauge", "The group's drift verdict per feature: -1 not enough data, 0 ok, 1 warn, 2 alert.",
                            ("group", "model", "version", "feature")),
    "edgekit_accuracy_level": ("gauge", "The group's accuracy verdict on late labels: -1 not enough data, 0 ok, 1 warn, 2 alert.",
                               ("group", "model", "version")),
    "edgekit_accuracy_ratio": ("gauge", "Top-1 accuracy on late labels over the current and previous hour (correct / labelled).",
                               ("group", "model", "version")),
    "edgekit_labelled_samples": ("gauge", "Late labels over the current and previous hour.", ("group", "model", "version")),
    "edgekit_latency_p95_seconds": ("gauge", "p95 inference latency over the current and previous hour (windows' p95, by requests).",
                                    ("group", "model", "version")),
    "edgekit_latency_mean_seconds": ("gauge", "Mean inference latency over the current and previous hour.", ("group", "model", "version")),
    "edgekit_requests": ("gauge", "Inference requests over the current and previous hour.", ("group", "model", "version")),
    "edgekit_rollout_status": ("gauge", "1 for each rollout's current status (running, done, aborted).", ("job", "model", "version", "status")),
    "edgekit_rollout_wave": ("gauge", "The wave each rollout is at (its number of waves once finished).", ("job",)),
    "edgekit_rollout_devices": ("gauge", "Devices per rollout, wave and job state.", ("job", "wave", "state")),
    "edgekit_alerts_last_hour": ("gauge", "Alerts raised in the last hour, per kind, scope and level.", ("kind", "scope", "level")),
    "edgekit_messages": ("counter", "Messages this collector handled: kind and outcome (stored, duplicate, malformed).",
                         ("collector", "kind", "outcome")),
    "edgekit_alerts_raised": ("counter", "Alerts this collector raised.", ("collector",)),
    "edgekit_collector_errors": ("counter", "Failures this collector's threads recovered from.", ("collector",)),
    "edgekit_inbox_messages": ("gauge", "Messages received and waiting to be stored.", ("collector",)),
    "edgekit_ingest_lag_p50_seconds": ("gauge", "Median time from a window's end to its commit in the store (last 10,000 windows).",
                                       ("collector",)),
    "edgekit_ingest_lag_p99_seconds": ("gauge", "99th percentile of the time from a window's end to its commit (last 10,000 windows).",
                                       ("collector",)),
}
# Monitor.stats key -> (kind, outcome) of edgekit_messages
_MESSAGE_STATS = {"telemetry": ("telemetry", "stored"), "duplicates": ("telemetry", "duplicate"), "states": ("state", "stored"),
                  "jobs": ("job", "stored"), "malformed": ("any", "malformed"), "references": ("reference", "stored"),
                  "rejected_references": ("reference", "rejected")}


def _prometheus() -> Any:
    try:
        import prometheus_client
        import prometheus_client.core  # the metric families of custom collectors
    except ImportError:
        raise InputError("--metrics-port needs prometheus_client: pip install prometheus_client (it comes with edgekit)") from None
    return prometheus_client


class FleetMetrics:
    """A ``prometheus_client`` collector over one fleet store (register it in a ``CollectorRegistry``).

    Args:
        store: the collector's store.
        collector: this process's id (the ``collector`` label of its own counters).
        stats: this process's counters (:attr:`Monitor.stats`: telemetry, duplicates, states, jobs, malformed, alerts, ...).
        process: more of this process's numbers: ``errors``, ``inbox``, ``lag_p50_s``, ``lag_p99_s``.
        clock: wall time.
    """

    def __init__(self, store: FleetStore, *, collector: str = "", stats: Callable[[], dict[str, int]] = dict,
                 process: Callable[[], dict[str, float]] = dict, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.collector = collector
        self.stats = stats
        self.process = process
        self.clock = clock
        self._core = _prometheus().core
        self._lock = threading.Lock()  # scrapes one at a time: each reads the store

    def describe(self) -> list[Any]:
        """Nothing: registering must not read the store (prometheus_client calls collect otherwise)."""
        return []

    def collect(self) -> Iterator[Any]:
        """The metric families, read now."""
        with self._lock:
            fams = {name: self._family(name) for name in NAMES}
            self._devices(fams)
            self._verdicts(fams)
            self._recent(fams)
            self._rollouts(fams)
            for a in self.store.alert_counts(since=self.clock() - 3600):
                fams["edgekit_alerts_last_hour"].add_metric([a.kind, a.scope, a.level], a.alerts)
            self._own(fams)
        yield from fams.values()

    def _family(self, name: str) -> Any:
        kind, text, labels = NAMES[name]
        cls = self._core.CounterMetricFamily if kind == "counter" else self._core.GaugeMetricFamily
        return cls(name, text, labels=list(labels))

    def _devices(self, fams: dict[str, Any]) -> None:
        by_version: dict[tuple[str, ...], int] = {}
        by_runtime: dict[tuple[str, ...], int] = {}
        for c in self.store.device_counts():
            k = (c.group, c.model or "", c.version or "", c.status)
            by_version[k] = by_version.get(k, 0) + c.devices
            r = (c.group, c.agent_version or "", c.runtime or "", c.runtime_status or "")
            by_runtime[r] = by_runtime.get(r, 0) + c.devices
        for v, n in by_version.items():
            fams["edgekit_devices"].add_metric(list(v), n)
        for rt, n in by_runtime.items():
            fams["edgekit_devices_by_runtime"].add_metric(list(rt), n)

    def _verdicts(self, fams: dict[str, Any]) -> None:
        for v in self.store.verdicts("group"):
            level = LEVELS.get(v.level, 0.0)
            if v.feature == ACCURACY:
                fams["edgekit_accuracy_level"].add_metric([v.name, v.model, v.version], level)
                continue
            fams["edgekit_drift_level"].add_metric([v.name, v.model, v.version, v.feature], level)
            if v.psi is not None:
                fams["edgekit_drift_psi"].add_metric([v.name, v.model, v.version, v.feature], v.psi)

    def _recent(self, fams: dict[str, Any]) -> None:
        """Accuracy, latency and requests per group and model version from the groups' hourly roll-ups."""
        acc: dict[tuple[str, str, str], list[Any]] = {}
        for h in self.store.hours(scope="group", since=self.clock() - RECENT_S):
            a = acc.setdefault((h.name, h.model, h.version), [0, 0, None])
            a[0] += h.labelled
            a[1] += h.correct
            if h.totals is not None and h.totals.windows:
                a[2] = h.totals.copy() if a[2] is None else a[2].add(h.totals)
        for key, (labelled, correct, totals) in acc.items():
            labels = list(key)
            if labelled:
                fams["edgekit_accuracy_ratio"].add_metric(labels, correct / labelled)
                fams["edgekit_labelled_samples"].add_metric(labels, labelled)
            if isinstance(totals, Totals):
                fams["edgekit_requests"].add_metric(labels, totals.requests)
                p95, mean = totals.latency_p95_ms(), totals.latency_mean_ms
                if p95 is not None:
                    fams["edgekit_latency_p95_seconds"].add_metric(labels, p95 / 1000)
                if mean is not None:
                    fams["edgekit_latency_mean_seconds"].add_metric(labels, mean / 1000)

    def _rollouts(self, fams: dict[str, Any]) -> None:
        for doc in self.store.rollouts(limit=ROLLOUTS):
            job, model = str(doc.get("job")), doc.get("model") or {}
            fams["edgekit_rollout_status"].add_metric([job, str(model.get("name", "")), str(model.get("version", "")),
                                                       str(doc.get("status", ""))], 1)
            fams["edgekit_rollout_wave"].add_metric([job], float(doc.get("wave") or 0))
            counts: dict[tuple[str, str], int] = {}
            for o in (doc.get("outcomes") or {}).values():
                k = (str(o.get("wave", "")), str(o.get("state", "")))
                counts[k] = counts.get(k, 0) + 1
            for (wave, state), n in sorted(counts.items()):
                fams["edgekit_rollout_devices"].add_metric([job, wave, state], n)

    def _own(self, fams: dict[str, Any]) -> None:
        stats, proc, me = self.stats(), self.process(), self.collector
        for key, (kind, outcome) in _MESSAGE_STATS.items():
            fams["edgekit_messages"].add_metric([me, kind, outcome], stats.get(key, 0))
        fams["edgekit_alerts_raised"].add_metric([me], stats.get("alerts", 0))
        fams["edgekit_collector_errors"].add_metric([me], proc.get("errors", 0))
        fams["edgekit_inbox_messages"].add_metric([me], proc.get("inbox", 0))
        fams["edgekit_ingest_lag_p50_seconds"].add_metric([me], proc.get("lag_p50_s", 0.0))
        fams["edgekit_ingest_lag_p99_seconds"].add_metric([me], proc.get("lag_p99_s", 0.0))


class MetricsServer:
    """``/metrics`` served on a thread (prometheus_client's WSGI server); :meth:`close` stops it."""

    def __init__(self, server: Any, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.host, self.port = server.server_address[:2]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def serve_metrics(metrics: FleetMetrics, *, port: int, host: str = "127.0.0.1") -> MetricsServer:
    """Serve ``metrics`` on ``http://host:port/metrics`` (port 0: a free one; :attr:`MetricsServer.port` says which)."""
    prom = _prometheus()
    registry = prom.CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    try:
        server, thread = prom.start_http_server(port, addr=host, registry=registry)
    except OSError as e:
        raise InputError(f"cannot serve /metrics on {host}:{port}: {e.strerror or e}; choose another --metrics-port") from None
    return MetricsServer(server, thread)
