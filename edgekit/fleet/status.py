"""The fleet status table and the job listing, as rows (for ``--json``) and as text."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from edgekit.fleet.versions import VERSION_COLUMNS, VERSION_FIELDS, runtime_columns

if TYPE_CHECKING:  # the table renders rows read from a store too (fleet status --db): no MQTT client for those
    from edgekit.fleet.client import DeviceView

__all__ = ["job_rows", "render", "status_rows"]


def status_rows(views: dict[str, DeviceView], *, group: str | None = None, now: float | None = None) -> list[dict[str, Any]]:
    """One row per device: device, group, online, model, version, job (latest), last seen, p95, requests, outbox."""
    now = now or time.time()
    rows = []
    for name in sorted(views):
        v = views[name]
        if group is not None and v.group != group:
            continue
        latest = max(v.jobs.values(), key=lambda u: u.ts, default=None)
        t = v.telemetry
        rows.append({
            "device": name,
            "group": v.group,
            "online": v.online,
            "model": v.model_name,
            "version": v.version,
            "job": latest.job if latest else None,
            "job_state": str(latest.state) if latest else None,
            "job_reason": latest.reason if latest else None,
            "last_seen": round(v.last_seen, 3) if v.last_seen else None,
            "last_seen_ago_s": round(now - v.last_seen, 1) if v.last_seen else None,
            "p95_ms": t.latency_ms.p95 if t and t.latency_ms else None,
            "requests": t.requests if t else None,
            "outbox": getattr(t, "outbox", None) if t else None,
            **_versions(v),
        })
    return rows


def _versions(v: DeviceView) -> dict[str, str | None]:
    """The version fields of the newer of the device's state and latest telemetry (a Last Will says none: the known ones stay)."""
    said = sorted((x for x in (v.state, v.telemetry) if x is not None), key=lambda x: x.boot)  # stable: telemetry after the state
    out: dict[str, str | None] = dict.fromkeys(VERSION_FIELDS)
    for m in said:
        for k, value in zip(VERSION_FIELDS, runtime_columns(m), strict=True):
            out[k] = value if value is not None else out[k]
    return out


def job_rows(views: dict[str, DeviceView], *, job: str | None = None) -> list[dict[str, Any]]:
    rows = []
    for name in sorted(views):
        for u in sorted(views[name].jobs.values(), key=lambda u: u.ts):
            if job is not None and u.job != job:
                continue
            rows.append({"job": u.job, "device": name, "state": str(u.state), "reason": u.reason, "ota_state": u.ota_state,
                         "detail": u.detail, "ts": u.ts, "model": (u.model or {}).get("version")})
    return rows


def _ago(s: float | None) -> str:
    if s is None:
        return "—"
    if s < 120:
        return f"{s:.0f}s ago"
    if s < 7200:
        return f"{s / 60:.0f}m ago"
    return f"{s / 3600:.0f}h ago"


def render(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """A plain aligned text table (``columns``: (key, header))."""
    def cell(r: dict[str, Any], k: str) -> str:
        v = r.get(k)
        if k == "last_seen_ago_s":
            return _ago(v)
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, float):
            return f"{v:.3f}"
        return "—" if v in (None, "") else str(v)

    table = [[h for _, h in columns]] + [[cell(r, k) for k, _ in columns] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table)


STATUS_COLUMNS = [("device", "device"), ("online", "online"), ("version", "model version"), ("job_state", "job state"),
                  ("last_seen_ago_s", "last seen"), ("p95_ms", "p95 ms"), ("requests", "requests"), ("outbox", "outbox"), ("drift", "drift"),
                  *VERSION_COLUMNS]
JOB_COLUMNS = [("job", "job"), ("device", "device"), ("state", "state"), ("reason", "reason"), ("model", "version"), ("detail", "detail")]
