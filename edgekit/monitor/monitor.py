"""The fleet monitor without any I/O of its own: broker messages in, stored history and alerts out.

:class:`Monitor` joins the two halves: :class:`~edgekit.monitor.ingest.Ingest` files each decoded
message in a :class:`~edgekit.monitor.store.FleetStore`, and only what is new goes on to
:class:`~edgekit.monitor.evaluation.Evaluator`, which judges drift and accuracy and returns the
alerts to publish. The collector (:mod:`edgekit.monitor.collector`) feeds it from MQTT; tests and
``fleet drift --db`` use it directly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from device_agent.contract.manifest import Manifest
from device_agent.contract.protocol import TelemetryMessage
from device_agent.ota.verify import TrustedKeys
from edgekit.monitor.config import MonitorConfig
from edgekit.monitor.drift import DriftReport
from edgekit.monitor.evaluation import Evaluator
from edgekit.monitor.ingest import Ingest
from edgekit.monitor.store import FleetStore, Reference

__all__ = ["Monitor"]


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
        msg = self.ingest.decode(topic, payload)
        if msg is None:
            return []
        with self._lock:
            filed = self.ingest.file(msg, payload)
            if isinstance(filed, Reference):
                self.evaluator.known(filed)
            if not isinstance(filed, TelemetryMessage):
                return []
            alerts = self.evaluator.on_telemetry(filed)
        self.stats["alerts"] += len(alerts)
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
        """Forget history older than the configured retention; returns the windows removed."""
        return self.store.prune(self.clock() - self.config.retention_s)
