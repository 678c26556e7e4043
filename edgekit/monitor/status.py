"""``fleet status`` from the fleet store: the devices page (every device, filtered and paged), and the drift column.

The collectors keep each device's state, latest telemetry, latest job and drift verdict in their
store (:meth:`FleetHistory.device_page`). ``fleet status --broker`` asks them (answered from the
store: complete at any fleet size, in well under a second), ``fleet status --db`` reads a store
directly. Without any collector, ``fleet status`` still reads the broker's retained messages
(:mod:`edgekit.fleet.status`), with their limits.

Status query (``<prefix>/fleet/monitor/query``, QoS 1; see :mod:`edgekit.monitor.query`)::

    {"v": 1, "type": "status_query", "id": "…", "reply": "…", "to": ["watch-1a2b"],
     "filter": {"group", "version", "online", "drift", "job_state", "agent_version", "runtime", "runtime_status", "offset", "limit"},
     "parts": 500}

Answer::

    {"v": 1, "type": "status_reply", "id": "…", "collector": "watch-1a2b", "store": "…", "total": 10000, "offset": 0,
     "rows": [{"device", "group", "status", "model", "version", "artifact", "last_seen", "agent_version", "requests",
               "p95_ms", "outbox", "job", "job_state", "job_reason", "drift_level", "drift", "runtime", "runtime_validated",
               "runtime_status", "runtime_detail"}]}

Asked for ``parts``, the rows come in messages of at most that many, each with ``"part"`` and ``"parts"``
(:mod:`edgekit.monitor.asking`): 10,000 devices are ~5 MB, more than a broker may take in one message.

The collectors also keep one retained summary per device on ``<prefix>/fleet/drift/<device>``
(:func:`edgekit.monitor.reports.drift_summary`), read by :func:`read_drift` for that fallback.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from device_agent.contract.protocol import DEFAULT_PREFIX, Topics
from edgekit.fleet.versions import VERSION_FIELDS
from edgekit.monitor.asking import Marker, one_per_store
from edgekit.monitor.store import DevicePage, DeviceQuery, DeviceRow, FleetHistory, open_store

if TYPE_CHECKING:
    from edgekit.fleet.mqtt import BrokerAddress, Received

__all__ = ["device_rows", "drift_cell", "drift_from_db", "merge_status", "read_drift", "read_status", "status_answer", "status_query"]


#: the filters a status query may carry (a collector of an older release ignores those it does not know)
_FILTERS = ("group", "version", "online", "drift", "job_state", "agent_version", "runtime", "runtime_status", "offset", "limit")


def status_query(query: DeviceQuery) -> dict[str, Any]:
    """The body of a status query for :func:`edgekit.monitor.query.ask`."""
    return {"type": "status_query", "filter": dataclasses.asdict(query)}


def status_answer(store: FleetHistory, q: dict[str, Any], *, collector: str) -> dict[str, Any]:
    """A collector's answer to status query ``q``: a page of its store's devices."""
    f = q.get("filter") or {}
    query = DeviceQuery(**{k: f[k] for k in _FILTERS if k in f})
    table = store.device_table(query)
    return {"v": 1, "type": "status_reply", "id": q.get("id"), "collector": collector, "store": store.store_id, "total": table.total,
            "offset": table.offset, "rows": table.records()}  # flat records: the fields of DeviceRow as they are


def merge_status(answers: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """The collectors' answers as one page of rows (the fields of :class:`DeviceRow`) and how many devices match in all:
    per device the newest row (by last seen), its gaps filled from the other stores'."""
    answers = one_per_store(answers)
    if len(answers) == 1:  # one store (the usual case): its page as it is
        return list(answers[0].get("rows", [])), int(answers[0].get("total") or 0)
    rows: dict[str, dict[str, Any]] = {}
    total = 0
    for a in answers:
        total = max(total, int(a.get("total") or 0))
        for r in a.get("rows", []):
            mine = rows.get(r["device"])
            if mine is None:
                rows[r["device"]] = r
                continue
            newer, older = (r, mine) if r.get("last_seen", 0) > mine.get("last_seen", 0) else (mine, r)
            rows[r["device"]] = {k: older.get(k) if v is None else v for k, v in newer.items()}
    return [r for _, r in sorted(rows.items())], total


def read_status(db: str | Path, query: DeviceQuery) -> DevicePage:
    """A page of devices read from a collector's store (a SQLite file or a ``postgresql://`` URL)."""
    store = open_store(db)
    try:
        return store.device_page(query)
    finally:
        store.close()


def device_rows(rows: list[DeviceRow] | list[dict[str, Any]], *, now: float | None = None) -> list[dict[str, Any]]:
    """The ``fleet status`` rows (the keys of :func:`edgekit.fleet.status.status_rows`, with ``drift`` and ``drift_level``)
    of a devices page (its records, or their fields as a status answer carries them)."""
    now = now or time.time()
    out = []
    for row in rows:  # 10,000 devices: a row costs microseconds here, so no per-row helpers or comprehensions
        r = row.__dict__ if isinstance(row, DeviceRow) else row
        seen = r["last_seen"]
        drift = r["drift"]
        o = {
            "device": r["device"],
            "group": r["group"] if r["status"] != "unknown" else "?",  # as the broker's view: no state message, no group
            "online": r["status"] == "online",
            "model": r["model"],
            "version": r["version"],
            "job": r["job"],
            "job_state": r["job_state"],
            "job_reason": r["job_reason"],
            "last_seen": round(seen, 3) if seen else None,
            "last_seen_ago_s": round(now - seen, 1) if seen else None,
            "p95_ms": r["p95_ms"],
            "requests": r["requests"],
            "outbox": r["outbox"],
            "drift": (drift or {}).get("text") or "—",
            "drift_level": r["drift_level"],
        }
        for k in VERSION_FIELDS:
            o[k] = r.get(k)
        out.append(o)
    return out


def read_drift(broker: str | BrokerAddress, *, prefix: str = DEFAULT_PREFIX, settle_s: float = 3.0,
               timeout: float = 5.0) -> dict[str, dict[str, Any]]:
    """Every device's retained drift summary, keyed by device id ({} when no collector ever ran).

    Args:
        broker: ``mqtt://`` URL or an address with credentials (:func:`edgekit.fleet.mqtt.parse_broker_url`).
        settle_s: at most this long for the retained summaries to arrive after the subscription (a marker
            published behind them says when they are all in: usually within milliseconds).
        timeout: for the broker to accept the subscription; without it the answer is {}.

    Raises FleetError when the broker is unreachable.
    """
    from edgekit.fleet.mqtt import BrokerSession, to_address

    out: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()
    marker = Marker(f"{prefix}/fleet/monitor/reply/{uuid.uuid4().hex[:16]}")

    def on_message(msg: Received) -> None:
        if marker.seen(msg):
            return
        try:
            d = json.loads(msg.payload) if msg.payload else None
        except ValueError:
            return
        if isinstance(d, dict) and isinstance(d.get("text"), str):
            with lock:
                out[msg.topic.rsplit("/", 1)[-1]] = d

    session = BrokerSession(to_address(broker), f"edgekit-status-{uuid.uuid4().hex[:8]}",
                            topics=(Topics.fleet_drift("+", prefix), marker.topic), on_message=on_message).open()
    try:
        if session.wait_ready(timeout):
            marker.settle(session, settle_s)  # retained messages follow the SUBACK at once, the marker behind them
    finally:
        session.close()
    with lock:
        return dict(out)


def drift_from_db(db: str | Path, devices: list[str]) -> dict[str, dict[str, Any]]:
    """The same summaries computed from a collector's store (a SQLite file or a ``postgresql://`` URL)."""
    from edgekit.monitor.reports import drift_summary  # judging's modules (pydantic thresholds): not for the devices page

    store = open_store(db)
    try:
        return {d: s for d in devices if (s := drift_summary(store, d)) is not None}
    finally:
        store.close()


def drift_cell(summaries: dict[str, dict[str, Any]], device: str) -> str:
    """The table cell for ``device`` ("—" when no collector judged it)."""
    s = summaries.get(device)
    return s["text"] if s else "—"
