"""Reports over the stored history: ``fleet drift`` per device or group, and the ``fleet status`` drift column.

Read-only: these functions judge what the store holds when asked (:func:`drift_reports`, from the
running totals of the span: one subtraction per device and model version, never the raw windows)
or summarise the verdicts the monitor stored as windows arrived (:func:`drift_summary`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from edgekit.monitor.alerts import fmt_time
from edgekit.monitor.drift import DriftReport, DriftThresholds, Level, evaluate, worst
from edgekit.monitor.store import ACCURACY, DriftState, FleetHistory, Reference, Span, Totals, VerdictStore
from edgekit.monitor.windows import WindowSet

__all__ = ["drift_reports", "drift_summary", "group_sets", "judge_set", "judge_sets", "summary_of"]


def group_sets(spans: Iterable[Span], key: Callable[[Span], str | None]) -> dict[tuple[str, str, str], WindowSet]:
    """Spans summed per (key, model, version) as window sets (spans whose key is None are left out)."""
    acc: dict[tuple[str, str, str], list[Any]] = {}
    for s in spans:
        k = key(s)
        if k is None or not s.totals.windows:
            continue
        a = acc.get((k, s.model, s.version))
        if a is None:
            acc[(k, s.model, s.version)] = [Totals(s.totals.layout).add(s.totals), {s.device}, s.start, s.end]
        else:
            a[0].add(s.totals)
            a[1].add(s.device)
            a[2] = min((x for x in (a[2], s.start) if x is not None), default=None)
            a[3] = max((x for x in (a[3], s.end) if x is not None), default=None)
    return {k: t.window_set(k[1], k[2], devices=devs, start=start, end=end) for k, (t, devs, start, end) in acc.items()}


def judge_set(ws: WindowSet, ref: Reference | None, *, scope: str, name: str, thresholds: DriftThresholds | None = None) -> DriftReport:
    """The report on one merged set; without a reference its level is "not enough data" and it has no features."""
    if ref is None:
        return DriftReport(scope, name, ws.model, ws.version, Level.NOT_ENOUGH_DATA, (), ws.samples, ws.windows,
                           tuple(sorted(ws.devices)), ws.start, ws.end, untracked=tuple(sorted(ws.features)))
    return evaluate(ws, ref.features, scope=scope, name=name, thresholds=thresholds)


def judge_sets(sets: dict[tuple[str, str, str], WindowSet], store: FleetHistory, scope: str, thresholds: DriftThresholds) -> list[DriftReport]:
    """A report per merged set (keyed by (name, model, version)), against the stored references."""
    refs: dict[tuple[str, str], Reference | None] = {}
    for _, model, version in sets:
        if (model, version) not in refs:
            refs[(model, version)] = store.reference(model, version)
    return [judge_set(ws, refs[(model, version)], scope=scope, name=name, thresholds=thresholds)
            for (name, model, version), ws in sorted(sets.items())]


def drift_reports(store: FleetHistory, *, device: str | None = None, group: str | None = None, window_s: float = 3600.0,
                  thresholds: DriftThresholds | None = None, now: float | None = None, per_device: bool = True) -> list[DriftReport]:
    """Drift over the last ``window_s``: per device (``device`` or every device), or per group
    (``group``: the group merged, then each of its devices unless not ``per_device``). One report per model version."""
    t = thresholds or DriftThresholds()
    since = (time.time() if now is None else now) - window_s
    if group is not None:
        spans = store.spans(group=group, since=since)
        return (judge_sets(group_sets(spans, lambda s: group), store, "group", t)
                + (judge_sets(group_sets(spans, lambda s: s.device), store, "device", t) if per_device else []))
    return judge_sets(group_sets(store.spans(device=device, since=since), lambda s: s.device), store, "device", t)


def drift_summary(store: VerdictStore, device: str) -> dict[str, Any] | None:
    """The drift column of ``fleet status`` for one device, from the monitor's stored verdicts.

    Returns None when the monitor never judged the device, else ``{level, model, version, features
    (moved, most first), since, accuracy (level or None), text}``; ``text`` is the table cell, e.g.
    ``alert: x[3], x[7] since 08:31Z``.
    """
    latest = store.latest_drift("device", device)
    if latest is None:
        return None
    return summary_of(*latest)


def summary_of(model: str, version: str, states: dict[str, DriftState]) -> dict[str, Any]:
    """:func:`drift_summary` of the verdicts ``states`` on ``model`` ``version``."""
    states = dict(states)
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
