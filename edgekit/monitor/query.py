"""Queries over MQTT: ``fleet drift --broker`` and ``fleet status --broker`` ask the running collectors.

Each collector's presence (retained) names the store it writes (``store``: the store's id).
Collectors that share one database answer alike, so the asking side picks one collector per store
(the query's ``to``) and keeps one answer per store (:mod:`edgekit.monitor.asking`); collectors with stores of their own each hold
a share of every device's windows (one shared subscription split the telemetry), and their answers
are added up. A collector answers from its store's running totals (:meth:`FleetHistory.spans`),
on a thread of its own: ingestion does not wait for it, nor it for ingestion. A set is a device's
or the group's running totals over the span (:class:`~edgekit.monitor.store.Totals` as two arrays
over its feature layout); answers of earlier collectors, with window sets (``"set"``), are read too.

Drift query (``<prefix>/fleet/monitor/query``, QoS 1)::

    {"v": 1, "type": "drift_query", "id": "…", "reply": "<prefix>/fleet/monitor/reply/<id>", "to": ["watch-1a2b"] | null,
     "device": "pi-07" | null, "group": "cameras" | null, "window_s": 3600, "parts": 500}

Answer (on ``reply``)::

    {"v": 1, "type": "drift_reply", "id": "…", "collector": "watch-1a2b", "store": "…",
     "sets": [{"scope", "name", "model", "version", "layout" (an index of "layouts"), "ints", "floats", "devices", "start", "end"}],
     "layouts": [[[feature, bins], ...], ...],
     "references": [{"model", "version", "features", "accuracy"}],
     "accuracy": [{"device", "model", "version", "labelled", "correct"}]}

Asked for ``parts``, the sets come in messages of at most that many (:mod:`edgekit.monitor.asking`).

Status queries and answers are described in :mod:`edgekit.monitor.status`.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from device_agent.contract.manifest import FeatureProfile
from device_agent.contract.protocol import DEFAULT_PREFIX
from edgekit.fleet.mqtt import BrokerAddress
from edgekit.monitor.asking import NoCollector, ask, one_per_store
from edgekit.monitor.bulk import Merged
from edgekit.monitor.drift import DriftReport, DriftThresholds
from edgekit.monitor.reports import judge_merged, merge_spans
from edgekit.monitor.store import FleetHistory, Layout, Reference, Totals
from edgekit.monitor.windows import WindowSet

__all__ = ["NoCollector", "answer", "ask", "ask_collectors", "merge_answers", "one_per_store", "query"]


def query(query_id: str, reply: str, *, device: str | None = None, group: str | None = None, window_s: float = 3600.0) -> dict[str, Any]:
    """The drift query message (see the module docs)."""
    return {"v": 1, "type": "drift_query", "id": query_id, "reply": reply, "device": device, "group": group, "window_s": window_s,
            "ts": round(time.time(), 3)}


def answer(store: FleetHistory, q: dict[str, Any], *, collector: str, now: float | None = None) -> dict[str, Any]:
    """A collector's answer to drift query ``q``: the running totals of the span, summed per device (and the group)."""
    since = (time.time() if now is None else now) - float(q.get("window_s") or 3600.0)
    device, group = q.get("device"), q.get("group")
    spans = store.spans(device=device, group=group, since=since)
    merged = list(merge_spans(spans, lambda s: group, scope="group").values()) if group else []
    merged += list(merge_spans(spans, lambda s: s.device, scope="device").values())
    layouts: dict[Any, int] = {}
    sets = [to_wire(m, layouts) for m in merged]
    refs = []
    for model, version in sorted({(m.model, m.version) for m in merged}):
        ref = store.reference(model, version)
        if ref is not None:
            refs.append({"model": model, "version": version, "features": [f.to_dict() for f in ref.features], "accuracy": ref.accuracy})
    acc = [{"device": s.device, "model": s.model, "version": s.version, "labelled": s.totals.labelled, "correct": s.totals.correct}
           for s in spans if s.totals.labelled]
    return {"v": 1, "type": "drift_reply", "id": q.get("id"), "collector": collector, "store": store.store_id, "sets": sets,
            "layouts": [[list(f) for f in layout.features] for layout in layouts], "references": refs, "accuracy": acc}


def to_wire(m: Merged, layouts: dict[Any, int]) -> dict[str, Any]:
    """A merged span in a drift answer: its running totals as arrays over a layout of the answer's ``layouts`` (its index)."""
    index = layouts.setdefault(m.totals.layout, len(layouts))
    return {"scope": m.scope, "name": m.name, "model": m.model, "version": m.version, "layout": index,
            "ints": m.totals.ints.tolist(), "floats": m.totals.floats.tolist(), "devices": sorted(m.devices), "start": m.start, "end": m.end}


def from_wire(s: dict[str, Any], layouts: list[Layout]) -> Merged:
    """A merged span of a drift answer (also the window sets earlier collectors sent)."""
    if "set" in s:
        ws = WindowSet.from_dict(s["set"])
        return Merged(s["scope"], s["name"], ws.model, ws.version, Totals.from_window_set(ws), set(ws.devices), ws.start, ws.end)
    layout = layouts[s["layout"]]
    totals = Totals(layout, np.asarray(s["ints"], np.int64), np.asarray(s["floats"], np.float64))
    return Merged(s["scope"], s["name"], s["model"], s["version"], totals, set(s.get("devices") or ()), s.get("start"), s.get("end"))


def merge_answers(answers: list[dict[str, Any]], *, thresholds: DriftThresholds | None = None) -> tuple[list[DriftReport], list[dict[str, Any]]]:
    """Sum the collectors' answers (one per store); judge each (scope, name, model, version). Returns (drift reports, accuracy rows)."""
    sets: dict[tuple[str, str, str, str], Merged] = {}
    refs: dict[tuple[str, str], Reference] = {}
    acc: dict[tuple[str, str, str], list[int]] = {}
    for a in one_per_store(answers):
        layouts = [Layout(tuple((str(n), int(b)) for n, b in features)) for features in a.get("layouts", [])]
        for s in a.get("sets", []):
            m = from_wire(s, layouts)
            key = (m.scope, m.name, m.model, m.version)
            if key in sets:
                mine = sets[key]
                mine.totals.add(m.totals)
                mine.devices |= m.devices
                mine.start = min((x for x in (mine.start, m.start) if x is not None), default=None)
                mine.end = max((x for x in (mine.end, m.end) if x is not None), default=None)
            else:
                sets[key] = m
        for r in a.get("references", []):
            refs[(r["model"], r["version"])] = Reference(r["model"], r["version"],
                                                         tuple(FeatureProfile.from_dict(f, "reference") for f in r["features"]),
                                                         {k: float(v) for k, v in (r.get("accuracy") or {}).items()})
        for row in a.get("accuracy", []):
            x = acc.setdefault((row["device"], row["model"], row["version"]), [0, 0])
            x[0] += int(row["labelled"])
            x[1] += int(row["correct"])
    ordered = [m for _, m in sorted(sets.items(), key=lambda kv: (kv[0][0] != "group", kv[0][1:]))]
    reports = judge_merged(ordered, lambda model, version: refs.get((model, version)), thresholds)
    rows = []
    for (device, model, version), (n, k) in sorted(acc.items()):
        ref = refs.get((model, version))
        rows.append({"device": device, "model": model, "version": version, "labelled": n, "correct": k, "accuracy": k / n if n else None,
                     "baseline": ref.baseline_accuracy() if ref else None})
    return reports, rows


def ask_collectors(broker: str | BrokerAddress, *, device: str | None = None, group: str | None = None, window_s: float = 3600.0,
                   prefix: str = DEFAULT_PREFIX, timeout: float = 5.0) -> tuple[list[dict[str, Any]], list[str]]:
    """Send a drift query to the online collectors (one per store); returns (answers, collectors that did not answer in time).

    Args:
        broker: ``mqtt://`` URL or an address with credentials (:func:`edgekit.fleet.mqtt.parse_broker_url`).

    Raises FleetError when the broker is unreachable or no collector is online.
    """
    return ask(broker, {"type": "drift_query", "device": device, "group": group, "window_s": window_s}, reply_type="drift_reply",
               prefix=prefix, timeout=timeout)
