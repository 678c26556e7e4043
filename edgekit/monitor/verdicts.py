"""Verdict state and the alerts it raises: one row per feature, an alert only when a verdict changes side.

The last verdict per feature is stored with the time it started. An alert goes out when a feature
rises to warn or alert (naming the features that moved most and since when), and a "resolved"
message when every feature is back to ok. Results are per model version, so a model update starts
a new state, and a drift that starts right after an update names the update. Accuracy verdicts
follow the same rule on their own row (:data:`~edgekit.monitor.store.ACCURACY`).

Inside :meth:`Verdicts.batch` the verdicts of a whole batch of windows are read in one query and
written in one transaction, and a row is written only when its level or start changed (or it was
last written ``REFRESH_S`` ago: ``updated`` still says which version was judged last). Each
device's summary (the ``fleet status`` drift column) is kept in the store as it changes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from edgekit.monitor.accuracy import AccuracyReport
from edgekit.monitor.alerts import alert_payload, fmt_time
from edgekit.monitor.config import MonitorConfig
from edgekit.monitor.drift import DriftReport, FeatureDrift, Level, level_of, worst
from edgekit.monitor.reports import summary_of
from edgekit.monitor.store import ACCURACY, DriftState, FleetStore

__all__ = ["REFRESH_S", "Verdicts"]

#: an unchanged verdict row is written again after this long (its ``updated`` time)
REFRESH_S = 60.0

Key = tuple[str, str, str, str]


def _changed(old: DriftState | None, new: DriftState) -> bool:
    return old is None or old.level != new.level or old.since != new.since or new.updated - old.updated >= REFRESH_S


def _bad(level: Level) -> bool:
    return level is Level.WARN or level is Level.ALERT


@dataclass
class _Step:
    """What one drift report changes: the new rows, the features that rose, since when each is on its side."""

    states: list[DriftState]
    escalated: list[FeatureDrift]
    since: dict[str, float]
    start: float


class Verdicts:
    """Keeps the verdict state of devices and groups in ``store`` and returns the alerts its changes raise.

    Args:
        store: where verdicts and alerts are kept (and the version history read, to name an update).
        config: the lookback and how many features an alert names.
        collector: named in every alert.
        clock: time source.
    """

    def __init__(self, store: FleetStore, config: MonitorConfig, *, collector: str = "", clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.config = config
        self.collector = collector
        self.clock = clock
        self._cache: dict[Key, dict[str, DriftState]] | None = None  # inside a batch: what the store holds, as updated
        self._writes: dict[Key, dict[str, DriftState]] = {}
        self._summaries: dict[str, str] = {}  # device -> the summary last written
        self._pending_summaries: dict[str, dict[str, Any]] = {}
        #: called with (device, summary) after a device's summary changed and was stored (the collector publishes it)
        self.on_summary: Callable[[str, dict[str, Any]], None] | None = None

    # --- reading and writing verdicts ---------------------------------------------------------------

    @contextmanager
    def batch(self, keys: Iterable[Key]) -> Iterator[None]:
        """Judge many: the verdicts of ``keys`` are read at once, what changed is written at the end."""
        self._cache = self.store.drift_states(list(keys))
        try:
            yield
        finally:
            self._cache = None
            self.flush()

    def _states(self, key: Key) -> dict[str, DriftState]:
        if self._cache is not None:
            if key not in self._cache:  # not announced to the batch: read it
                self._cache[key] = self.store.drift_state(*key)
            return dict(self._cache[key])
        return self.store.drift_state(*key)

    def _put(self, key: Key, prev: dict[str, DriftState], states: list[DriftState]) -> None:
        merged = {**prev, **{s.feature: s for s in states}}
        changed = {s.feature: s for s in states if _changed(prev.get(s.feature), s)}
        if changed:
            self._writes.setdefault(key, {}).update(changed)
        if key[0] == "device":
            summary = summary_of(key[2], key[3], merged)
            text = json.dumps(summary, sort_keys=True)
            if self._summaries.get(key[1]) != text:
                self._summaries[key[1]] = text
                self._pending_summaries[key[1]] = summary
        if self._cache is not None:
            self._cache[key] = merged
        else:
            self.flush()

    def flush(self) -> None:
        """Write the verdict rows and device summaries that changed."""
        writes, self._writes = self._writes, {}
        summaries, self._pending_summaries = self._pending_summaries, {}
        if writes:
            self.store.set_drift_states([(k, list(v.values())) for k, v in writes.items()])
        if summaries:
            self.store.set_device_drifts(list(summaries.items()))
        if self.on_summary is not None:
            for device, summary in summaries.items():
                self.on_summary(device, summary)

    # --- drift --------------------------------------------------------------------------------------

    def drift(self, report: DriftReport, *, device: str | None = None, group: str | None = None) -> list[dict[str, Any]]:
        """Store the verdicts of ``report``; returns a drift alert when a feature rose, "resolved" when all are back."""
        key = (report.scope, report.name, report.model, report.version)
        stored = self._states(key)
        prev = {k: v for k, v in stored.items() if k != ACCURACY}
        step = self._step(report, prev)
        if not step.states:
            return []
        self._put(key, stored, step.states)
        current = {**{k: level_of(v.level) for k, v in prev.items()}, **{s.feature: level_of(s.level) for s in step.states}}
        was_bad = any(_bad(level_of(v.level)) for v in prev.values())
        ts = round(self.clock(), 3)
        base: dict[str, Any] = {"scope": report.scope, "name": report.name, "device": device, "group": group,
                                "model": {"name": report.model, "version": report.version},
                                "window": {"start": report.start, "end": report.end}, "samples": report.samples,
                                "collector": self.collector, "ts": ts}
        if step.escalated:
            return [self._keep(self._drift_alert(report, step, device, base), ts=ts)]
        if was_bad and not any(_bad(lv) for lv in current.values()):
            text = f"{report.name}: input drift resolved on {report.model} {report.version}; every feature is back within thresholds"
            payload = alert_payload(kind="resolved", level="ok", since=step.start, features=[], update=None, message=text, **base)
            return [self._keep(payload, ts=ts)]
        return []

    def _step(self, report: DriftReport, prev: dict[str, DriftState]) -> _Step:
        now = report.end or self.clock()
        # a device verdict covers a few recent windows: the drift is dated from their start; a group's
        # covers the whole lookback, so it is dated from when it was first seen
        start = (report.start or now) if report.scope == "device" else now
        step = _Step([], [], {}, start)
        for f in report.features:
            if f.level is Level.NOT_ENOUGH_DATA:
                continue
            p = prev.get(f.name)
            prev_level = level_of(p.level) if p else Level.OK
            same_side = p is not None and _bad(prev_level) == _bad(f.level)
            step.since[f.name] = p.since if same_side and p is not None else start
            step.states.append(DriftState(f.name, str(f.level), step.since[f.name], now, f.psi))
            if _bad(f.level) and f.level.rank > prev_level.rank:
                step.escalated.append(f)
        return step

    def _drift_alert(self, report: DriftReport, step: _Step, device: str | None, base: dict[str, Any]) -> dict[str, Any]:
        moved = report.moved[: self.config.max_features_in_alert]
        level = worst(f.level for f in report.features)
        since = min(step.since[f.name] for f in moved)
        update = self._update_of(device, report.model, report.version, since) if device else None
        names = ", ".join(f.name for f in moved)
        text = (f"{report.name}: input drift ({level}) in {names} since {fmt_time(since)} on {report.model} {report.version}"
                + (f", after the update from {update['from']} at {fmt_time(update['at'])}" if update else "")
                + f" ({moved[0].reasons[0] if moved[0].reasons else ''})")
        features = [{**f.to_dict(), "since": step.since[f.name]} for f in moved]
        return alert_payload(kind="drift", level=str(level), since=since, features=features, update=update, message=text, **base)

    def _update_of(self, device: str, model: str, version: str, since: float) -> dict[str, Any] | None:
        """The update that put ``version`` on the device, when the drift started within the lookback after it."""
        history = [h for h in self.store.version_history(device) if h[0] == model]
        for i, (_, v, first) in enumerate(history):
            if v == version and i > 0 and since - first <= self.config.lookback_s:
                return {"from": history[i - 1][1], "at": first}
        return None

    # --- accuracy -----------------------------------------------------------------------------------

    def accuracy(self, rep: AccuracyReport, *, device: str | None = None, group: str | None = None) -> list[dict[str, Any]]:
        """Store the accuracy verdict; returns an accuracy alert when it rose to warn/alert, "resolved" when it recovered."""
        if rep.level is Level.NOT_ENOUGH_DATA:
            return []
        scope, name, model, version = rep.scope, rep.name, rep.model, rep.version
        stored = self._states((scope, name, model, version))
        prev = stored.get(ACCURACY)
        prev_level = level_of(prev.level) if prev else Level.OK
        now = self.clock()
        bad, was_bad = _bad(rep.level), _bad(prev_level)
        since = prev.since if prev is not None and bad == was_bad else now
        self._put((scope, name, model, version), stored, [DriftState(ACCURACY, str(rep.level), since, now, None)])
        base: dict[str, Any] = {"scope": scope, "name": name, "device": device, "group": group, "model": {"name": model, "version": version},
                "collector": self.collector, "ts": round(now, 3), "features": [],
                "accuracy": {"value": rep.accuracy, "baseline": rep.baseline, "labelled": rep.labelled, "correct": rep.correct,
                             "max_drop": self.config.accuracy_max_drop, "upper_bound": rep.upper_bound}}
        if bad and rep.level.rank > prev_level.rank:
            text = f"{name}: model accuracy ({rep.level}) on {model} {version}: {rep.reason}"
            return [self._keep(alert_payload(kind="accuracy", level=str(rep.level), since=since, update=None, message=text, **base), ts=now)]
        if was_bad and not bad:
            text = f"{name}: model accuracy recovered on {model} {version}: {rep.reason}"
            return [self._keep(alert_payload(kind="resolved", level="ok", since=now, update=None, message=text, **base), ts=now)]
        return []

    def _keep(self, payload: dict[str, Any], *, ts: float) -> dict[str, Any]:
        self.store.add_alert(payload, ts=ts)
        return payload
