"""Fleet alert messages: what the monitor publishes on ``<prefix>/fleet/alerts/<scope>/<name>``.

One JSON object per alert (QoS 1, not retained)::

    {"v": 1, "type": "alert", "kind": "drift" | "accuracy" | "resolved",
     "scope": "device" | "group", "name": "pi-07", "device": "pi-07" | null, "group": "cameras" | null,
     "level": "warn" | "alert" | "ok",
     "model": {"name": "digits", "version": "2.0.0"},
     "since": 1764000000.0,                       # when the condition started (window start)
     "features": [{"name", "level", "psi", "ks", "nan_share", "out_of_range_share",
                   "mean_shift_std", "since", "reasons"}, ...],   # drift: the most moved first
     "accuracy": {"value", "baseline", "labelled", "correct", "max_drop", "upper_bound"},   # accuracy
     "update": {"from": "1.0.0", "at": 1763990000.0} | null,  # the model changed just before: blame it
     "window": {"start", "end"}, "samples": 1200,
     "collector": "watch-1a2b", "ts": 1764000123.4,
     "message": "pi-07: input drift (alert) in x[3], x[7] since 2026-11-24 08:31:02Z on digits 2.0.0 …"}
"""

from __future__ import annotations

import datetime as _dt
import json
from typing import Any

__all__ = ["ALERT_TYPE", "alert_payload", "fmt_time", "parse_alert"]

ALERT_TYPE = "alert"
KINDS = ("drift", "accuracy", "resolved")


def fmt_time(ts: float | None) -> str:
    """``2026-11-24 08:31:02Z`` (UTC), or "?"."""
    if ts is None:
        return "?"
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def alert_payload(**fields: Any) -> dict[str, Any]:
    """The alert object with its envelope (``v``, ``type``); ``fields`` as in the module docs."""
    kind = fields.get("kind")
    if kind not in KINDS:
        raise ValueError(f"alert kind {kind!r}; allowed: {', '.join(KINDS)}")
    return {"v": 1, "type": ALERT_TYPE, **fields}


def parse_alert(payload: bytes | str) -> dict[str, Any]:
    """Decode an alert published by a collector; raises ValueError on anything else."""
    d = json.loads(payload)
    if not isinstance(d, dict) or d.get("type") != ALERT_TYPE or d.get("kind") not in KINDS:
        raise ValueError("not an edgekit fleet alert")
    return d
