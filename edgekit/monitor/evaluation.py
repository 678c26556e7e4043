"""Evaluation: what a new telemetry window (or the group timer) means for drift and accuracy.

Drift, per device: on each new window, the newest windows of that device *and model version* are
merged, newest first, until they cover the minimum sample count — a single window when it is
large enough, so a shift shows up within one window of sufficient size; several small windows on a
quiet device. The evaluator keeps those windows itself (as running totals, with their running sum
per device and version), so judging a window reads nothing back; until it has seen enough (after a
restart, or with windows shared between collectors), it merges the newest *minutes* of the store's
running totals instead (:meth:`FleetHistory.recent_span`). Per group: every
``group_interval_s``, the running totals of the group's devices over the lookback, per model
version — one subtraction per device, however many windows (:meth:`FleetHistory.spans`).
Accuracy: the late labels of the lookback, per device and per group (:mod:`edgekit.monitor.accuracy`).
Verdict changes become alerts in :mod:`edgekit.monitor.verdicts`.

The store is only read here (and written through :class:`~edgekit.monitor.verdicts.Verdicts`);
what arrives is filed by :mod:`edgekit.monitor.ingest` first.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from device_agent.contract.protocol import TelemetryMessage
from edgekit.monitor.accuracy import group_accuracy_pairs, judge_accuracy, span_accuracy
from edgekit.monitor.config import MonitorConfig
from edgekit.monitor.drift import DriftReport, evaluate, min_samples_for, worst
from edgekit.monitor.reports import judge_merged, merge_spans
from edgekit.monitor.store import FleetStore, Layout, Reference, Totals
from edgekit.monitor.verdicts import Verdicts
from edgekit.monitor.windows import WindowSet

__all__ = ["Evaluator"]

log = logging.getLogger("edgekit.monitor")

#: seconds a device's group is used for its alerts before it is read again (a state message filed here resets it)
GROUP_TTL_S = 60.0


@dataclass
class _Recent:
    """The newest windows of one device and model version (oldest first), enough to cover the minimum samples, and their sum."""

    #: (start, end, samples, its totals — or the message itself when it is enough alone)
    windows: deque[tuple[float, float, int, Totals | TelemetryMessage]] = field(default_factory=deque)
    total: Totals | None = None
    samples: int = 0


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
        self._recent: dict[tuple[str, str, str], _Recent] = {}
        self._layouts: dict[tuple[str, str], Layout] = {}
        self._needs: dict[tuple[str, str, int], int] = {}
        self._groups: dict[str, tuple[float, str | None]] = {}  # device -> (monotonic time read, group or None)
        #: called between groups (the collector makes it wait while a query is answered)
        self.pause: Callable[[], None] = lambda: None

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
        report = self.device_drift(msg.device, model, version, msg=msg)
        if report is not None:
            alerts += self.verdicts.drift(report, device=msg.device, group=self._group(msg.device))
        if msg.feedback:
            for v in msg.feedback.accuracy:
                alerts += self._device_accuracy(msg.device, model, v)
        return alerts

    def _group(self, device: str) -> str | None:
        """The device's group for its alerts (None: unknown), read at most every GROUP_TTL_S: a store read
        for every judged window took a tenth of a busy collector's time (5,000 devices at 5 s)."""
        now = time.monotonic()
        hit = self._groups.get(device)
        if hit is not None and now - hit[0] < GROUP_TTL_S:
            return hit[1]
        rec = self.store.device(device)
        group = rec.group if rec and rec.status != "unknown" else None
        self._groups[device] = (now, group)
        return group

    def states_changed(self, devices: Iterable[str]) -> None:
        """Devices whose state (and so possibly group) was just filed: read their group again."""
        for d in devices:
            self._groups.pop(d, None)

    def remember(self, msg: TelemetryMessage) -> None:
        """Count a stored window among its device's newest without judging it (a backlog judges the newest of each device only)."""
        model, version = (msg.model or {}).get("name"), (msg.model or {}).get("version")
        ref = self.reference(model, version) if model and version else None
        if ref is not None:
            need = max((min_samples_for(f.counts, self.config.thresholds) for f in ref.features), default=1)
            self._remember((msg.device, model, version), msg, need, self.clock() - self.config.lookback_s)  # type: ignore[arg-type]

    def device_drift(self, device: str, model: str, version: str, *, msg: TelemetryMessage | None = None) -> DriftReport | None:
        """The device's newest windows on this version, merged until they are enough, judged (None: no reference).

        ``msg``: a window just stored, to be counted first.
        """
        ref = self.reference(model, version)
        if ref is None:
            if (model, version) not in self.missing_reference:
                self.missing_reference.add((model, version))
                log.warning("monitor: no drift reference for %s %s (seen on %s); register its manifest: "
                            "edgekit fleet watch --model DIR, or deploy it with edgekit fleet deploy", model, version, device)
            return None
        t = self.config.thresholds
        need = self._need(ref)
        since = self.clock() - self.config.lookback_s
        key = (device, model, version)
        if msg is not None:
            self._remember(key, msg, need, since)
        if msg is not None and msg.samples >= need:
            ws: WindowSet | None = WindowSet.of_message(model, version, msg)  # large enough alone: the common case
        else:
            ws = self._merged(key, need, since)
        if ws is None:
            return None
        report = evaluate(ws, ref.features, scope="device", name=device, thresholds=t)
        if msg is not None and ws.windows > 1 and any(f.nan for f in msg.features):
            # merging dilutes a burst: a small newest window still gets its own NaN verdict (valid at any size)
            newest = WindowSet(model, version)
            newest.add(msg)
            alone = {f.name: f for f in evaluate(newest, ref.features, scope="device", name=device, thresholds=t).features}
            features = tuple(alone[f.name] if f.name in alone and alone[f.name].level.rank > f.level.rank else f for f in report.features)
            report = dataclasses.replace(report, features=features, level=worst(f.level for f in features))
        return report

    def _need(self, ref: Reference) -> int:
        """Samples a verdict on ``ref``'s version needs (its most demanding feature)."""
        key = (ref.model, ref.version, id(ref))
        need = self._needs.get(key)
        if need is None:
            need = self._needs[key] = max((min_samples_for(f.counts, self.config.thresholds) for f in ref.features), default=1)
        return need

    def _remember(self, key: tuple[str, str, str], msg: TelemetryMessage, need: int, since: float) -> None:
        """Keep ``msg`` among the newest windows of its device and version; drop those no longer needed."""
        rec = self._recent.setdefault(key, _Recent())
        start, end = float(msg.window.get("start", msg.ts)), float(msg.window.get("end", msg.ts))
        if msg.samples >= need:  # enough alone: nothing older will be merged with it, and no totals are needed
            rec.windows.clear()
            rec.windows.append((start, end, msg.samples, msg))
            rec.total, rec.samples = None, msg.samples
            return
        layout = self._layouts.get(key[1:], Layout()).extended(msg)
        self._layouts[key[1:]] = layout
        t = Totals.of_window(msg, layout)
        if rec.windows and isinstance(rec.windows[0][3], TelemetryMessage):  # after a large window: start over
            rec.windows.clear()
            rec.total, rec.samples = None, 0
        rec.windows.append((start, end, msg.samples, t))
        rec.total = t.copy() if rec.total is None else rec.total.add(t)
        rec.samples += msg.samples
        while len(rec.windows) > 1 and (rec.samples - rec.windows[0][2] >= need or rec.windows[0][1] < since):
            _, _, n, old = rec.windows.popleft()
            if isinstance(old, Totals):
                rec.total.add(old, -1)
            rec.samples -= n

    def _merged(self, key: tuple[str, str, str], need: int, since: float) -> WindowSet | None:
        """The newest windows covering ``need`` samples: the ones kept here, else (after a restart) the store's newest minutes."""
        device, model, version = key
        rec = self._recent.get(key)
        if rec is not None and rec.windows and isinstance(rec.windows[-1][3], TelemetryMessage) and rec.windows[-1][1] >= since:
            return WindowSet.of_message(model, version, rec.windows[-1][3])
        if rec is not None and rec.total is not None and rec.samples >= need:
            kept = [w for w in rec.windows if w[1] >= since]
            if len(kept) < len(rec.windows):
                total = Totals(rec.total.layout)
                for w in kept:
                    if isinstance(w[3], Totals):
                        total.add(w[3])
            else:
                total = rec.total
            if not kept:
                return None
            return total.window_set(model, version, devices=(device,), start=min(w[0] for w in kept), end=max(w[1] for w in kept))
        span = self.store.recent_span(device, model, version, samples=need, since=since)
        if span is None:
            return None
        return span.totals.window_set(model, version, devices=(device,), start=span.start, end=span.end)

    def _device_accuracy(self, device: str, model: str, version: str) -> list[dict[str, Any]]:
        rec = self.store.device(device)
        since = self.clock() - self.config.lookback_s
        labelled, correct = span_accuracy(self.store.spans(device=device, since=since), model, version)
        ref = self.reference(model, version)
        rep = judge_accuracy("device", device, model=model, version=version, labelled=labelled, correct=correct,
                             baseline=ref.baseline_accuracy(rec.artifact if rec and rec.version == version else None) if ref else None,
                             config=self.config)
        return self.verdicts.accuracy(rep, device=device, group=rec.group if rec else None)

    def _forget(self, since: float) -> None:
        """Drop the kept windows of devices quiet for the whole lookback."""
        for key in [k for k, r in self._recent.items() if not r.windows or r.windows[-1][1] < since]:
            del self._recent[key]

    # --- groups -------------------------------------------------------------------------------------

    def evaluate_groups(self, *, force: bool = False) -> list[dict[str, Any]]:
        """Judge every group (at most every ``group_interval_s`` unless ``force``); returns alerts."""
        now = self.clock()
        if not force and now - self._last_groups < self.config.group_interval_s:
            return []
        self._last_groups = now
        self._forget(now - self.config.lookback_s)
        alerts: list[dict[str, Any]] = []
        for g in self.store.groups():
            self.pause()  # a group at a time: a query waiting goes first
            mine = self.store.spans(group=g, since=now - self.config.lookback_s)
            merged = merge_spans(mine, lambda s: s.group, scope="group")
            for report in judge_merged((m for _, m in sorted(merged.items())), self.reference, self.config.thresholds):
                if report.features:
                    with self.lock:  # verdict updates take turns with the ingest path
                        alerts += self.verdicts.drift(report, group=g)
            for model, version in group_accuracy_pairs(mine):
                labelled, correct = span_accuracy(mine, model, version)
                ref = self.reference(model, version)
                rep = judge_accuracy("group", g, model=model, version=version, labelled=labelled, correct=correct,
                                     baseline=ref.baseline_accuracy() if ref else None, config=self.config)
                with self.lock:
                    alerts += self.verdicts.accuracy(rep, group=g)
        return alerts
