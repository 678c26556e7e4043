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
from edgekit.monitor.bulk import Merged, evaluate_totals
from edgekit.monitor.drift import DriftReport, DriftThresholds, Level, evaluate, level_of, worst
from edgekit.monitor.store import ACCURACY, DriftState, FleetHistory, Reference, Span, Totals, VerdictStore
from edgekit.monitor.windows import WindowSet

__all__ = ["drift_over_time", "drift_reports", "drift_summary", "group_sets", "judge_merged", "judge_set", "judge_sets", "merge_spans", "reports_of",
           "summary_of"]


def merge_spans(spans: Iterable[Span], key: Callable[[Span], str | None], *, scope: str) -> dict[tuple[str, str, str], Merged]:
    """Spans summed per (key, model, version) (spans whose key is None, or without windows, are left out)."""
    acc: dict[tuple[str, str, str], Merged] = {}
    for s in spans:
        k = key(s)
        if k is None or not s.totals.windows:
            continue
        m = acc.get((k, s.model, s.version))
        if m is None:
            acc[(k, s.model, s.version)] = Merged(scope, k, s.model, s.version, Totals(s.totals.layout).add(s.totals), {s.device},
                                                  s.start, s.end)
        else:
            m.totals.add(s.totals)
            m.devices.add(s.device)
            m.start = min((x for x in (m.start, s.start) if x is not None), default=None)
            m.end = max((x for x in (m.end, s.end) if x is not None), default=None)
    return acc


def group_sets(spans: Iterable[Span], key: Callable[[Span], str | None]) -> dict[tuple[str, str, str], WindowSet]:
    """Spans summed per (key, model, version) as window sets (spans whose key is None are left out)."""
    return {k: m.window_set() for k, m in merge_spans(spans, key, scope="").items()}


def judge_set(ws: WindowSet, ref: Reference | None, *, scope: str, name: str, thresholds: DriftThresholds | None = None) -> DriftReport:
    """The report on one merged set; without a reference its level is "not enough data" and it has no features."""
    if ref is None:
        return DriftReport(scope, name, ws.model, ws.version, Level.NOT_ENOUGH_DATA, (), ws.samples, ws.windows,
                           tuple(sorted(ws.devices)), ws.start, ws.end, untracked=tuple(sorted(ws.features)))
    return evaluate(ws, ref.features, scope=scope, name=name, thresholds=thresholds)


def judge_merged(merged: Iterable[Merged], reference: Callable[[str, str], Reference | None],
                 thresholds: DriftThresholds | None = None) -> list[DriftReport]:
    """A report per merged span, in the order given, each model version judged in one pass (:func:`evaluate_totals`)."""
    items = list(merged)
    by_version: dict[tuple[str, str], list[int]] = {}
    for i, m in enumerate(items):
        by_version.setdefault((m.model, m.version), []).append(i)
    out: list[DriftReport | None] = [None] * len(items)
    for (model, version), idx in by_version.items():
        ref = reference(model, version)
        for i, report in zip(idx, evaluate_totals([items[i] for i in idx], ref.features if ref else None, thresholds=thresholds),
                             strict=True):
            out[i] = report
    return [r for r in out if r is not None]


def judge_sets(sets: dict[tuple[str, str, str], Merged], store: FleetHistory, thresholds: DriftThresholds) -> list[DriftReport]:
    """A report per merged span (keyed by (name, model, version), in key order), against the stored references."""
    refs: dict[tuple[str, str], Reference | None] = {}

    def reference(model: str, version: str) -> Reference | None:
        if (model, version) not in refs:
            refs[(model, version)] = store.reference(model, version)
        return refs[(model, version)]

    return judge_merged((m for _, m in sorted(sets.items())), reference, thresholds)


def drift_reports(store: FleetHistory, *, device: str | None = None, group: str | None = None, window_s: float = 3600.0,
                  thresholds: DriftThresholds | None = None, now: float | None = None, per_device: bool = True) -> list[DriftReport]:
    """Drift over the last ``window_s``: per device (``device`` or every device), or per group
    (``group``: the group merged, then each of its devices unless not ``per_device``). One report per model version."""
    t = thresholds or DriftThresholds()
    since = (time.time() if now is None else now) - window_s
    spans = store.spans(device=device, group=group, since=since)
    return reports_of(spans, group=group, thresholds=t, store=store, per_device=per_device)


def reports_of(spans: list[Span], *, group: str | None, thresholds: DriftThresholds, store: FleetHistory,
               per_device: bool = True) -> list[DriftReport]:
    """The reports of :func:`drift_reports` from spans already read."""
    out = judge_sets(merge_spans(spans, lambda s: group, scope="group"), store, thresholds) if group is not None else []
    if group is None or per_device:
        out += judge_sets(merge_spans(spans, lambda s: s.device, scope="device"), store, thresholds)
    return out


def drift_over_time(store: FleetHistory, *, device: str | None = None, group: str | None = None, since: float, until: float,
                    step_s: float = 3600.0, thresholds: DriftThresholds | None = None) -> list[DriftReport]:
    """One report per step of ``step_s`` from ``since`` to ``until`` (a heat map of drift per feature over time), oldest first.

    A group's steps of an hour come from its hourly roll-ups (kept ``retention_s``: months); a device's,
    or other steps, from the running totals (minute resolution for a few hours, hourly back to the raw retention).
    """
    t = thresholds or DriftThresholds()
    merged: list[Merged] = []
    if group is not None and device is None and step_s == 3600.0:
        for h in store.hours(scope="group", name=group, since=since, until=until):
            if h.totals is not None and h.windows:
                merged.append(Merged("group", group, h.model, h.version, h.totals, set(), h.hour, h.hour + 3600.0))
    else:
        at = since
        while at < until:
            spans = store.spans(device=device, group=group, since=at, until=min(until, at + step_s) - 60.0)
            for m in merge_spans(spans, lambda s: device or group, scope="device" if device else "group").values():
                m.start, m.end = at, min(until, at + step_s)
                merged.append(m)
            at += step_s
    refs: dict[tuple[str, str], Reference | None] = {}

    def reference(model: str, version: str) -> Reference | None:
        if (model, version) not in refs:
            refs[(model, version)] = store.reference(model, version)
        return refs[(model, version)]

    return judge_merged(merged, reference, t)


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
    moved = sorted((s for s in states.values() if level_of(s.level).rank >= Level.WARN.rank),
                   key=lambda s: (level_of(s.level).rank, s.psi or 0.0), reverse=True)
    judged = [level_of(s.level) for s in states.values()]
    level = worst(judged) if judged else Level.NOT_ENOUGH_DATA
    since = min((s.since for s in moved), default=None)
    if moved:
        names = ", ".join(s.feature for s in moved[:3]) + (f" +{len(moved) - 3}" if len(moved) > 3 else "")
        text = f"{level}: {names} since {fmt_time(since)[11:]}"
    else:
        text = level.text
    if acc is not None and level_of(acc.level).rank >= Level.WARN.rank:
        text += f"; accuracy {acc.level}"
    return {"level": str(level), "model": model, "version": version, "features": [s.feature for s in moved], "since": since,
            "accuracy": acc.level if acc else None, "text": text}
