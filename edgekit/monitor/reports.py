"""Reports over the stored history: ``fleet drift`` per device or group, and the ``fleet status`` drift column.

Read-only: these functions judge what the store holds when asked (:func:`drift_reports`) or
summarise the verdicts the monitor stored as windows arrived (:func:`drift_summary`).
"""

from __future__ import annotations

import time
from typing import Any

from edgekit.monitor.alerts import fmt_time
from edgekit.monitor.drift import DriftReport, DriftThresholds, Level, evaluate, worst
from edgekit.monitor.store import ACCURACY, FleetHistory, Reference, VerdictStore
from edgekit.monitor.windows import WindowSet, group_windows

__all__ = ["drift_reports", "drift_summary", "judge_set", "judge_sets"]


def judge_set(ws: WindowSet, ref: Reference | None, *, scope: str, name: str, thresholds: DriftThresholds | None = None) -> DriftReport:
    """The report on one merged set; without a reference its level is "not enough data" and it has no features."""
    if ref is None:
        return DriftReport(scope, name, ws.model, ws.version, Level.NOT_ENOUGH_DATA, (), ws.samples, ws.windows,
                           tuple(sorted(ws.devices)), ws.start, ws.end, untracked=tuple(sorted(ws.features)))
    return evaluate(ws, ref.features, scope=scope, name=name, thresholds=thresholds)


def judge_sets(sets: dict[tuple[str, str, str], WindowSet], store: FleetHistory, scope: str, thresholds: DriftThresholds) -> list[DriftReport]:
    """A report per merged set (keyed by (name, model, version)), against the stored references."""
    return [judge_set(ws, store.reference(model, version), scope=scope, name=name, thresholds=thresholds)
            for (name, model, version), ws in sorted(sets.items())]


def drift_reports(store: FleetHistory, *, device: str | None = None, group: str | None = None, window_s: float = 3600.0,
                  thresholds: DriftThresholds | None = None, now: float | None = None, per_device: bool = True) -> list[DriftReport]:
    """Drift over the last ``window_s``: per device (``device`` or every device), or per group
    (``group``: the group merged, then each of its devices unless not ``per_device``). One report per model version."""
    t = thresholds or DriftThresholds()
    since = (time.time() if now is None else now) - window_s
    if group is not None:
        msgs = store.telemetry(group=group, since=since)
        return (judge_sets(group_windows(msgs, lambda m: group), store, "group", t)
                + (judge_sets(group_windows(msgs, lambda m: m.device), store, "device", t) if per_device else []))
    msgs = store.telemetry(device=device, since=since)
    return judge_sets(group_windows(msgs, lambda m: m.device), store, "device", t)


def drift_summary(store: VerdictStore, device: str) -> dict[str, Any] | None:
    """The drift column of ``fleet status`` for one device, from the monitor's stored verdicts.

    Returns None when the monitor never judged the device, else ``{level, model, version, features
    (moved, most first), since, accuracy (level or None), text}``; ``text`` is the table cell, e.g.
    ``alert: x[3], x[7] since 08:31Z``.
    """
    latest = store.latest_drift("device", device)
    if latest is None:
        return None
    model, version, states = latest
    acc = states.pop(ACCURACY, None)
    moved = sorted((s for s in states.values() if Level(s.level).rank >= Level.WARN.rank),
                   key=lambda s: (Level(s.level).rank, s.psi or 0.0), reverse=True)
    judged = [Level(s.level) for s in states.values()]
    level = worst(judged) if judged else Level.NOT_ENOUGH_DATA
    since = min((s.since for s in moved), default=None)
    if moved:
        names = ", ".join(s.feature for s in moved[:3]) + (f" +{len(moved) - 3}" if len(moved) > 3 else "")
        text = f"{level}: {names} since {fmt_time(since)[11:]}"
    else:
        text = level.text
    if acc is not None and Level(acc.level).rank >= Level.WARN.rank:
        text += f"; accuracy {acc.level}"
    return {"level": str(level), "model": model, "version": version, "features": [s.feature for s in moved], "since": since,
            "accuracy": acc.level if acc else None, "text": text}
