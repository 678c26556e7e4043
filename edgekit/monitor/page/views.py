"""The fleet page's views, one function each: ``(store, query parameters, now) -> (title, body)``.

- :func:`devices`   ``/``: devices and versions, filtered and paged, with the fleet counted per version
- :func:`device`    ``/device/<id>``: one device's state, versions, jobs, hours, drift over time and alerts
- :func:`rollouts`  ``/rollouts``: rollouts with their waves, outcomes and abort reasons
- :func:`drift`     ``/drift``: drift per feature over time, a heat map per group and model version
- :func:`alerts`    ``/alerts``: the alerts raised, newest first

They read the store only (:class:`~edgekit.monitor.store.FleetStore`); everything they show is
escaped by :mod:`edgekit.monitor.page.html`. A bad parameter raises :class:`BadRequest`, an unknown
device :class:`NotFound`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from edgekit.monitor.drift import DriftReport, DriftThresholds
from edgekit.monitor.page.html import Html, ago, esc, link, pager, status, table, when
from edgekit.monitor.page.svg import heatmap, lines
from edgekit.monitor.reports import drift_over_time
from edgekit.monitor.store import DeviceQuery, FleetStore

__all__ = ["BadRequest", "NotFound", "alerts", "device", "devices", "drift", "rollouts"]

#: devices per page unless ?limit= says otherwise (at most MAX_LIMIT)
LIMIT = 50
MAX_LIMIT = 500
_FILTERS = ("group", "version", "agent_version", "runtime", "runtime_status", "drift", "job_state", "online")


class BadRequest(ValueError):
    """A query parameter the page cannot use (400)."""


class NotFound(LookupError):
    """No such device (404)."""


def _int(q: Mapping[str, str], key: str, default: int, lo: int, hi: int) -> int:
    raw = q.get(key) or ""
    if not raw:
        return default
    try:
        v = int(raw)
    except ValueError:
        raise BadRequest(f"{key}={raw!r} is not a whole number; use {lo}..{hi}") from None
    if not lo <= v <= hi:
        raise BadRequest(f"{key}={v} is out of range; use {lo}..{hi}")
    return v


def _online(raw: str | None) -> bool | None:
    if raw in (None, ""):
        return None
    if raw not in ("yes", "no"):
        raise BadRequest(f"online={raw!r} is not allowed; use yes or no (or leave it out)")
    return raw == "yes"


def devices(store: FleetStore, q: Mapping[str, str], now: float) -> tuple[str, Html]:
    """Devices and versions."""
    limit, offset = _int(q, "limit", LIMIT, 1, MAX_LIMIT), _int(q, "offset", 0, 0, 10**9)
    f = {k: (q.get(k) or None) for k in _FILTERS}
    page = store.device_page(DeviceQuery(group=f["group"], version=f["version"], online=_online(f["online"]), drift=f["drift"],
                                         job_state=f["job_state"], agent_version=f["agent_version"], runtime=f["runtime"],
                                         runtime_status=f["runtime_status"], offset=offset, limit=limit))
    counts = store.device_counts()
    total, online = sum(c.devices for c in counts), sum(c.devices for c in counts if c.status == "online")
    mismatched = sum(c.devices for c in counts if c.runtime_status in ("mismatch", "refused"))
    cards = Html("".join(f'<div class="card"><b>{esc(v)}</b>{esc(k)}</div>' for k, v in
                         (("devices", total), ("online", online), ("runtime mismatch", mismatched))))
    versions: dict[tuple[str, str, str], list[int]] = {}
    for c in counts:
        v = versions.setdefault((c.group, c.model or "—", c.version or "—"), [0, 0])
        v[0] += c.devices
        v[1] += c.devices if c.status == "online" else 0
    by_version = table(["group", "model", "version", "devices", "online"],
                       [(link(g, "/", {"group": g}), m, link(v, "/", {"version": v}) if v != "—" else v, n, on)
                        for (g, m, v), (n, on) in sorted(versions.items())], numeric=(3, 4))
    rows = [(link(r.device, "/device/", segment=r.device), r.group, r.status, r.model, r.version, r.agent_version, r.runtime,
             r.runtime_validated, status(r.runtime_status), ago(r.last_seen, now), _num(r.p95_ms), r.requests, status(r.job_state),
             status(r.drift_level) if r.drift_level else None) for r in page.rows]
    listing = table(["device", "group", "status", "model", "version", "agent", "runtime", "validated", "runtime status", "last seen",
                     "p95 ms", "requests", "job state", "drift"], rows, numeric=(10, 11), empty="no device matches", cls="devices")
    kept = {k: v for k, v in f.items() if v} | ({"limit": limit} if limit != LIMIT else {})
    nav = pager("/", kept, offset=offset, limit=limit, shown=len(page.rows), total=page.total)
    return "Devices", Html(f"<div class=cards>{cards}</div><h2>Versions</h2>{by_version}<h2>Devices</h2>{_filter_form(f)}{nav}{listing}{nav}")


def _filter_form(f: Mapping[str, str | None]) -> Html:
    def field(name: str, label: str) -> str:
        return f'<label>{esc(label)}<input name="{esc(name)}" value="{esc(f.get(name) or "")}" size="12"></label>'

    def choice(name: str, label: str, options: Sequence[str]) -> str:
        opts = "".join(f'<option value="{esc(o)}"{" selected" if f.get(name) == o else ""}>{esc(o or "any")}</option>' for o in options)
        return f'<label>{esc(label)}<select name="{esc(name)}">{opts}</select></label>'

    return Html('<form method="get" action="/">' + field("group", "group") + field("version", "model version")
                + field("agent_version", "agent") + field("runtime", "runtime") + choice("online", "online", ("", "yes", "no"))
                + choice("drift", "drift", ("", "ok", "warn", "alert", "not_enough_data", "none"))
                + choice("runtime_status", "runtime status", ("", "match", "drift", "mismatch", "refused", "unknown", "none"))
                + '<button type="submit">filter</button></form>')


def device(store: FleetStore, name: str, q: Mapping[str, str], now: float) -> tuple[str, Html]:
    """One device's history."""
    rec = store.device(name)
    if rec is None:
        raise NotFound(f"no device {name!r} in this fleet store")
    hours = _int(q, "hours", 24, 1, 24 * 90)
    since, until = _span(hours, now)
    facts = table(["field", "value"], [("group", rec.group), ("status", status(rec.status)), ("model", f"{rec.model or '—'} {rec.version or ''}"),
                             ("artifact", rec.artifact), ("agent", rec.agent_version), ("runtime", rec.runtime),
                             ("validated with", rec.runtime_validated), ("runtime check", status(rec.runtime_status)),
                             ("runtime detail", rec.runtime_detail), ("last seen", Html(f"{when(rec.last_seen)} ({ago(rec.last_seen, now)})"))])
    versions = table(["model", "version", "first window"], [(m, v, when(t)) for m, v, t in store.version_history(name)])
    jobs = table(["job", "state", "reason", "detail", "version", "at"],
                 [(j.job, status(j.state), j.reason, j.detail, j.version, when(j.ts)) for j in store.jobs(device=name)])
    rows = store.hours(scope="device", name=name, since=since)
    labels = [time.strftime("%H:00", time.gmtime(h.hour)) for h in rows]
    plot = lines(labels, [("p95 max (ms)", [h.p95_max_ms for h in rows]), ("mean (ms)", [h.latency_mean_ms for h in rows])],
                 title=f"latency of {name} per hour", unit=" ms") if rows else Html('<p class="muted">no telemetry in this span</p>')
    hour_table = table(["hour", "model", "version", "windows", "samples", "requests", "errors", "mean ms", "p95 max ms", "labelled", "correct"],
                       [(when(h.hour), h.model, h.version, h.windows, h.samples, h.requests, h.errors,
                         _num(h.latency_mean_ms), _num(h.p95_max_ms), h.labelled, h.correct)
                        for h in rows], numeric=range(3, 11))
    maps = _heatmaps(drift_over_time(store, device=name, since=since, until=until), since, until)
    raised = _alert_table(store.alerts(scope="device", name=name, limit=50))
    return f"Device {name}", Html(f"{facts}<h2>Model versions</h2>{versions}<h2>Jobs</h2>{jobs}<h2>Last {hours} h</h2>{plot}{hour_table}"
                                  f"<h2>Drift per feature</h2>{maps}<h2>Alerts</h2>{raised}")


def rollouts(store: FleetStore, q: Mapping[str, str], now: float) -> tuple[str, Html]:
    """Rollouts with their waves and abort reasons."""
    docs = store.rollouts(limit=_int(q, "limit", 20, 1, 200))
    job = q.get("job") or None
    if job is not None:
        docs = [d for d in docs if d.get("job") == job]
    parts = []
    for d in docs:
        model = d.get("model") or {}
        outcomes: dict[str, dict[str, Any]] = d.get("outcomes") or {}
        waves: list[list[str]] = d.get("waves") or _waves_of(outcomes)
        head = table(["job", "model", "status", "wave", "succeeded", "failed", "not updated", "updated"],
                     [(link(d.get("job"), "/rollouts", {"job": d.get("job")}), f"{model.get('name', '?')} {model.get('version', '?')}",
                       status(d.get("status")), f"{d.get('wave', 0)} of {len(waves)}", d.get("succeeded", _count(outcomes, "SUCCEEDED")),
                       d.get("failed", _count(outcomes, "FAILED")),
                       len(d.get("skipped") or []), when(d.get("ts")))], numeric=(4, 5, 6))
        abort = f'<p class="aborted">{esc(d["aborted"])}</p>' if d.get("aborted") else ""
        per_wave = []
        for i, members in enumerate(waves):
            states: dict[str, int] = {}
            reasons = set()
            for dev in members:
                o = outcomes.get(dev) or {}
                states[str(o.get("state", "not reached"))] = states.get(str(o.get("state", "not reached")), 0) + 1
                if o.get("reason"):
                    reasons.add(str(o["reason"]))
            shown = Html(", ".join(str(link(m, "/device/", segment=m)) for m in members[:8]) + (" …" if len(members) > 8 else ""))
            per_wave.append((i, len(members), ", ".join(f"{k} {v}" for k, v in sorted(states.items())), ", ".join(sorted(reasons)) or None,
                             shown))
        parts.append(f"{head}{abort}{table(['wave', 'devices', 'states', 'reasons', 'members'], per_wave, numeric=(0, 1), cls='waves')}")
    return "Rollouts", Html("<hr>".join(parts) if parts else '<p class="muted">no rollout published yet (edgekit fleet deploy)</p>')


def _num(v: float | None) -> str | None:
    return None if v is None else f"{v:.3g}"


def _span(hours: int, now: float) -> tuple[float, float]:
    """The last ``hours`` clock hours, the current one included (steps of the heat maps fall on the hour)."""
    top = (int(now) // 3600 + 1) * 3600
    return float(top - hours * 3600), float(top)


def _waves_of(outcomes: Mapping[str, Mapping[str, Any]]) -> list[list[str]]:
    """The waves of a rollout record without its plan: its devices by the wave their outcome names."""
    waves: list[list[str]] = []
    for dev, o in sorted(outcomes.items()):
        w = o.get("wave")
        i = w if isinstance(w, int) and 0 <= w < 1000 else 0  # a record is operator input, not always well formed
        waves += [[] for _ in range(i + 1 - len(waves))]
        waves[i].append(dev)
    return waves


def _count(outcomes: Mapping[str, Mapping[str, Any]], state: str) -> int:
    return sum(1 for o in outcomes.values() if o.get("state") == state)


def drift(store: FleetStore, q: Mapping[str, str], now: float) -> tuple[str, Html]:
    """Drift per feature over time: a heat map per group and model version, from the groups' hourly roll-ups."""
    hours = _int(q, "hours", 24, 1, 24 * 90)
    since, until = _span(hours, now)
    groups = [q["group"]] if q.get("group") else store.groups()
    parts = []
    for g in groups[:50]:
        reports = drift_over_time(store, group=g, since=since, until=until)
        parts.append(f"<h2>group {link(g, '/drift', {'group': g, 'hours': hours})}</h2>{_heatmaps(reports, since, until)}")
    head = f'<p class="muted">PSI per feature per hour, last {hours} h (?hours= for more); hover a cell for its value.</p>'
    return "Drift", Html(head + ("".join(parts) or '<p class="muted">no group has reported yet</p>'))


def _heatmaps(reports: list[DriftReport], since: float, until: float, thresholds: DriftThresholds | None = None) -> Html:
    """A heat map per model version: every hour of the span a column (grey without telemetry), every feature a row."""
    t = thresholds or DriftThresholds()
    by_version: dict[tuple[str, str], list[DriftReport]] = {}
    for r in reports:
        by_version.setdefault((r.model, r.version), []).append(r)
    out = []
    for (model, version), reps in sorted(by_version.items()):
        steps = [since + 3600.0 * i for i in range(int((until - since) // 3600))]
        features = sorted({f.name for r in reps for f in r.features})
        if not features:
            out.append(f'<p class="muted">{esc(model)} {esc(version)}: no reference profile registered</p>')
            continue
        cell = {(r.start or 0.0, f.name): f.psi for r in reps for f in r.features}
        labels = [time.strftime("%m-%d %H:00", time.gmtime(s)) for s in steps]
        out.append(str(heatmap(features, labels, [[cell.get((s, f)) for s in steps] for f in features],
                               title=f"{model} {version}: PSI per feature per hour", warn=t.psi_warn, alert=t.psi_alert)))
    return Html("".join(out) or '<p class="muted">no telemetry in this span</p>')


def alerts(store: FleetStore, q: Mapping[str, str], now: float) -> tuple[str, Html]:
    """The alerts raised, newest first (``?scope=`` and ``?name=`` filter)."""
    found = store.alerts(scope=q.get("scope") or None, name=q.get("name") or None, limit=_int(q, "limit", 200, 1, 2000))
    return "Alerts", _alert_table(found)


def _alert_table(found: list[Any]) -> Html:
    rows = [(when(a.ts), a.kind, a.scope, link(a.name, "/device/", segment=a.name) if a.scope == "device" else a.name,
             f"{a.model} {a.version}", status(a.level), a.payload.get("message")) for a in found]
    return table(["time", "kind", "scope", "name", "model", "level", "message"], rows, empty="no alert", cls="alerts")
