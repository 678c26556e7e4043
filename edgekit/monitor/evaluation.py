"""Evaluation: what a new telemetry window (or the group timer) means for drift and accuracy.

Drift, per device: on each new window, the newest windows of that device *and model version* are
merged, newest first, until they cover the minimum sample count — a single window when it is
large enough, so a shift shows up within one window of sufficient size; several small windows on a
quiet device. Per group: every ``group_interval_s``, all windows of the group's devices over the
lookback, per model version. Accuracy: the late labels of the lookback, per device and per group
(:mod:`edgekit.monitor.accuracy`). Verdict changes become alerts in :mod:`edgekit.monitor.verdicts`.

The store is only read here (and written through :class:`~edgekit.monitor.verdicts.Verdicts`);
what arrives is filed by :mod:`edgekit.monitor.ingest` first.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from device_agent.contract.protocol import TelemetryMessage
from edgekit.monitor.accuracy import accuracy_counts, accuracy_report, judge_accuracy
from edgekit.monitor.config import MonitorConfig
from edgekit.monitor.drift import DriftReport, evaluate, min_samples_for, worst
from edgekit.monitor.reports import drift_reports
from edgekit.monitor.store import FleetStore, Reference
from edgekit.monitor.verdicts import Verdicts
from edgekit.monitor.windows import WindowSet

__all__ = ["Evaluator"]

log = logging.getLogger("edgekit.monitor")


class Evaluator:
    """Judges devices and groups against their references; returns the alert payloads verdict changes raise.

    Args:
        store: the history to judge and where verdicts go.
        config: thresholds and windows.
        collector: named in alerts.
        clock: time source.
        lock: serialises verdict updates with the ingest path (held by the caller of :meth:`on_telemetry`).
    """

    def __init__(self, store: FleetStore, config: MonitorConfig, *, collector: str = "", clock: Callable[[], float] = time.time,
                 lock: threading.Lock | None = None) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self.lock = lock or threading.Lock()
        self.verdicts = Verdicts(store, config, collector=collector, clock=clock)
        #: model versions seen without a reference (warned about once each)
        self.missing_reference: set[tuple[str, str]] = set()
        self._last_groups = 0.0
        self._references: dict[tuple[str, str], Reference] = {}

    def known(self, ref: Reference) -> None:
        """A reference was registered: use it from now on."""
        self._references[(ref.model, ref.version)] = ref
        self.missing_reference.discard((ref.model, ref.version))

    def reference(self, model: str, version: str) -> Reference | None:
        """The reference of a model version; parsed profiles are cached, misses re-read (another collector may add one)."""
        ref = self._references.get((model, version))
        if ref is None:
            ref = self.store.reference(model, version)
            if ref is not None:
                self._references[(model, version)] = ref
        return ref

    # --- devices ------------------------------------------------------------------------------------

    def on_telemetry(self, msg: TelemetryMessage) -> list[dict[str, Any]]:
        """Judge the device of a newly stored window: drift on its model version, accuracy on each labelled version."""
        model, version = (msg.model or {}).get("name"), (msg.model or {}).get("version")
        if not (model and version):
            return []
        alerts: list[dict[str, Any]] = []
        report = self.device_drift(msg.device, model, version)
        if report is not None:
            rec = self.store.device(msg.device)
            alerts += self.verdicts.drift(report, device=msg.device, group=rec.group if rec and rec.status != "unknown" else None)
        if msg.feedback:
            for v in msg.feedback.accuracy:
                alerts += self._device_accuracy(msg.device, model, v)
        return alerts

    def device_drift(self, device: str, model: str, version: str) -> DriftReport | None:
        """The device's newest windows on this version, merged until they are enough, judged (None: no reference)."""
        ref = self.reference(model, version)
        if ref is None:
            if (model, version) not in self.missing_reference:
                self.missing_reference.add((model, version))
                log.warning("monitor: no drift reference for %s %s (seen on %s); register its manifest: "
                            "edgekit fleet watch --model DIR, or deploy it with edgekit fleet deploy", model, version, device)
            return None
        t = self.config.thresholds
        need = max((min_samples_for(f.counts, t) for f in ref.features), default=1)
        msgs = self.store.recent(device, model, version, samples=need, since=self.clock() - self.config.lookback_s)
        ws = WindowSet(model, version)
        for m in msgs:
            ws.add(m)
        report = evaluate(ws, ref.features, scope="device", name=device, thresholds=t)
        if len(msgs) > 1 and any(f.nan for f in msgs[0].features):
            # merging dilutes a burst: a small newest window still gets its own NaN verdict (valid at any size)
            newest = WindowSet(model, version)
            newest.add(msgs[0])
            alone = {f.name: f for f in evaluate(newest, ref.features, scope="device", name=device, thresholds=t).features}
            features = tuple(alone[f.name] if f.name in alone and alone[f.name].level.rank > f.level.rank else f for f in report.features)
            report = dataclasses.replace(report, features=features, level=worst(f.level for f in features))
        return report

    def _device_accuracy(self, device: str, model: str, version: str) -> list[dict[str, Any]]:
        rec = self.store.device(device)
        rep = accuracy_report(self.store, device, model, version, since=self.clock() - self.config.lookback_s, config=self.config,
                              artifact=rec.artifact if rec and rec.version == version else None)
        return self.verdicts.accuracy(rep, device=device, group=rec.group if rec else None)

    # --- groups -------------------------------------------------------------------------------------

    def evaluate_groups(self, *, force: bool = False) -> list[dict[str, Any]]:
        """Judge every group (at most every ``group_interval_s`` unless ``force``); returns alerts."""
        now = self.clock()
        if not force and now - self._last_groups < self.config.group_interval_s:
            return []
        self._last_groups = now
        alerts: list[dict[str, Any]] = []
        for g in sorted({d.group for d in self.store.devices()}):
            # the merged report is the slow part: ingest goes on meanwhile; verdict updates take turns with it
            for report in drift_reports(self.store, group=g, window_s=self.config.lookback_s, thresholds=self.config.thresholds,
                                        now=now, per_device=False):
                if report.features:
                    with self.lock:
                        alerts += self.verdicts.drift(report, group=g)
            with self.lock:
                alerts += self._group_accuracy(g, now)
        return alerts

    def _group_accuracy(self, group: str, now: float) -> list[dict[str, Any]]:
        """Late labels of every device of the group together, per model version judged against the manifest."""
        msgs = self.store.telemetry(group=group, since=now - self.config.lookback_s)
        pairs = {((m.model or {}).get("name") or "?", v) for m in msgs if m.feedback for v in m.feedback.accuracy}
        alerts: list[dict[str, Any]] = []
        for model, version in sorted(pairs):
            labelled, correct = accuracy_counts(msgs, model, version)
            ref = self.reference(model, version)
            rep = judge_accuracy("group", group, model=model, version=version, labelled=labelled, correct=correct,
                                 baseline=ref.baseline_accuracy() if ref else None, config=self.config)
            alerts += self.verdicts.accuracy(rep, group=group)
        return alerts
