"""The fleet monitor without any I/O of its own: broker messages in, stored history and alerts out.

:class:`Monitor` joins the two halves: :class:`~edgekit.monitor.ingest.Ingest` files each decoded
message in a :class:`~edgekit.monitor.store.FleetStore`, and only what is new goes on to
:class:`~edgekit.monitor.evaluation.Evaluator`, which judges drift and accuracy and returns the
alerts to publish. :meth:`Monitor.handle` does both for one message; the collector
(:mod:`edgekit.monitor.collector`) files batches on one thread (:meth:`Monitor.ingest_batch`) and
judges what they stored on another (:meth:`Monitor.judge`), so judging never holds up ingestion.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

from device_agent.contract.manifest import Manifest
from device_agent.contract.protocol import Message, StateMessage, TelemetryMessage
from device_agent.ota.verify import TrustedKeys
from edgekit.monitor.config import MonitorConfig
from edgekit.monitor.drift import DriftReport
from edgekit.monitor.evaluation import Evaluator
from edgekit.monitor.ingest import Filed, Ingest
from edgekit.monitor.store import FleetStore, Reference

__all__ = ["REJUDGE_S", "Monitor"]

#: behind (a backlog of windows to judge), a device and version judged within this many seconds is not judged again
REJUDGE_S = 30.0


class Monitor:
    """Files messages, judges drift and accuracy, returns alert payloads. Thread-safe.

    Args:
        store: where history and verdicts live.
        config: thresholds and windows.
        collector: this monitor's id (stored with each window, named in alerts).
        clock: time source.
        trusted: when given, a manifest seen in a deploy command becomes a reference only if its
            signature verifies against these keys (anyone who can publish could otherwise plant one).
    """

    def __init__(self, store: FleetStore, config: MonitorConfig | None = None, *, collector: str = "", clock: Callable[[], float] = time.time,
                 trusted: TrustedKeys | None = None) -> None:
        self.store = store
        self.config = config or MonitorConfig()
        self.collector = collector
        self.clock = clock
        self._lock = threading.Lock()
        #: counters: telemetry, duplicates, states, malformed, references, rejected_references, alerts
        self.stats: dict[str, int] = {"alerts": 0}
        self.ingest = Ingest(store, collector=collector, trusted=trusted, stats=self.stats)
        self.evaluator = Evaluator(store, self.config, collector=collector, clock=clock, lock=self._lock)
        self._judged_at: dict[tuple[str, str | None, str | None], float] = {}  # (device, model, version) -> monotonic time

    @property
    def missing_reference(self) -> set[tuple[str, str]]:
        """Model versions seen in telemetry without a reference to judge them against."""
        return self.evaluator.missing_reference

    def register(self, manifest: Manifest, source: str = "") -> Reference:
        """Judge ``manifest``'s model version against its own drift profile and accuracy."""
        ref = self.ingest.register(manifest, source)
        self.evaluator.known(ref)
        return ref

    def handle(self, topic: str, payload: bytes) -> list[dict[str, Any]]:
        """Take one MQTT message; returns the alerts it raised. Never raises on bad payloads."""
        return self.judge(self.ingest_batch([(topic, payload)]))

    def ingest_batch(self, messages: list[tuple[str, bytes]]) -> Filed:
        """File MQTT messages (topic, payload) in the store, in one transaction per kind; returns what was new."""
        decoded: list[tuple[Message, bytes]] = []
        for topic, payload in messages:
            msg = self.ingest.decode(topic, payload)
            if msg is not None:
                decoded.append((msg, payload))
        filed = self.ingest.file_batch(decoded)
        self.evaluator.states_changed(m.device for m, _ in decoded if isinstance(m, StateMessage))
        for ref in filed.references:
            self.evaluator.known(ref)
        return filed

    def judge(self, filed: Filed | list[TelemetryMessage], *, coalesce: bool = False) -> list[dict[str, Any]]:
        """Judge windows stored for the first time, in order; returns the alerts they raised.

        ``coalesce``: judge only the newest window of each device and version, and only if that device
        and version was not judged within :data:`REJUDGE_S` (any window with a NaN burst is judged);
        the others only count among the device's newest. For a backlog: verdicts catch up with at
        most one judgement per device instead of one per window, and a collector taking 1,000
        windows a second (5,000 devices at 5 s) keeps its CPU for filing them.
        """
        windows = filed.telemetry if isinstance(filed, Filed) else filed
        if not windows:
            return []
        newest = {_key(m): i for i, m in enumerate(windows)}
        nan_warn = self.config.thresholds.nan_warn
        now, last = time.monotonic(), self._judged_at
        if coalesce:
            recent = now - REJUDGE_S
            judged = [(i == newest[_key(m)] and last.get(_key(m), -math.inf) < recent) or any(f.n and f.nan / f.n >= nan_warn for f in m.features)
                      for i, m in enumerate(windows)]
        else:
            judged = [True] * len(windows)
        for m, j in zip(windows, judged, strict=True):
            if j:
                last[_key(m)] = now
        keys = {("device", m.device, (m.model or {}).get("name") or "?", v) for m, j in zip(windows, judged, strict=True) if j
                for v in ([(m.model or {}).get("version") or "?"] + list(m.feedback.accuracy if m.feedback else ()))}
        alerts: list[dict[str, Any]] = []
        with self._lock, self.evaluator.verdicts.batch(keys):
            for m, j in zip(windows, judged, strict=True):
                if j:
                    alerts += self.evaluator.on_telemetry(m)
                else:
                    self.evaluator.remember(m)
        self.stats["alerts"] += len(alerts)
        self.stats["coalesced"] = self.stats.get("coalesced", 0) + judged.count(False)
        return alerts

    def device_drift(self, device: str, model: str, version: str) -> DriftReport | None:
        """The device's current drift report on this version (None: no reference); see :mod:`edgekit.monitor.evaluation`."""
        return self.evaluator.device_drift(device, model, version)

    def evaluate_groups(self, *, force: bool = False) -> list[dict[str, Any]]:
        """Judge every group (at most every ``group_interval_s`` unless ``force``); returns alerts."""
        alerts = self.evaluator.evaluate_groups(force=force)
        self.stats["alerts"] += len(alerts)
        return alerts

    def prune(self) -> int:
        """Forget what is older than the configured retentions (roll-ups, raw windows, minute totals); returns the raw windows removed."""
        now = self.clock()
        c = self.config
        return self.store.prune(now - c.retention_s, raw_before=now - c.raw_retention_s, minutes_before=now - c.minutes_s)


def _key(m: TelemetryMessage) -> tuple[str, str | None, str | None]:
    return m.device, (m.model or {}).get("name"), (m.model or {}).get("version")
