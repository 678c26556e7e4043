"""Measurements of benchmarks/fleet_scale.py: loss and lag from the store, the operator's commands, storage per row, a backlog.

Everything is read the way an operator would: ``fleet status`` / ``fleet drift`` through the real
CLI (in this process, so Python's start-up is not counted; the command's own work is), and the
store's own tables for what was stored and when.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from scale_sim import Link, Templates, connect_packet, device_name  # noqa: E402

__all__ = ["backlog", "cli_timing", "delivery", "drift_alerts", "storage_bytes"]


def _rows(db: str, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    from edgekit.monitor.store import open_store

    store = open_store(db)
    try:
        with store._read() as r:  # type: ignore[attr-defined]  # the SQL backends' read seam
            return r.rows(sql, args)
    finally:
        store.close()


def delivery(db: str, sim: dict[str, Any], *, collector: str) -> dict[str, Any]:
    """What the broker acknowledged against what the collector stored: lost windows, stored twice, ingest lag."""
    stored: dict[str, set[int]] = {}
    lags, ends = [], []
    for device, seq, lag, end in _rows(db, "SELECT device, seq, stored - window_end, window_end FROM telemetry WHERE collector = ?", (collector,)):
        stored.setdefault(device, set()).add(int(seq))
        lags.append(float(lag))
        ends.append(float(end))
    lost = 0
    sent = 0
    for device, d in sim["devices"].items():
        expected = set(range(d["first"], d["last"] + 1)) - set(d["unacked"])
        sent += len(expected)
        lost += len(expected - stored.get(device, set()))
    lag = np.asarray(lags) if lags else np.zeros(1)
    return {"acknowledged": sent, "stored": sum(len(s) for s in stored.values()), "lost": lost,
            "unacknowledged": sum(len(d["unacked"]) for d in sim["devices"].values()),
            "reconnects": sum(d["reconnects"] for d in sim["devices"].values()),
            "lag_p50_s": float(np.percentile(lag, 50)), "lag_p99_s": float(np.percentile(lag, 99)), "lag_max_s": float(lag.max()),
            "late_windows": _late_spans(np.asarray(ends) if ends else np.zeros(1), lag)}


def _late_spans(ends: np.ndarray, lag: np.ndarray, *, over_s: float = 2.0) -> list[dict[str, Any]]:
    """When windows were filed over ``over_s`` late: runs of such windows (by window end, wall clock), the worst first (at most 5)."""
    late = np.sort(ends[lag > over_s])
    if not late.size:
        return []
    breaks = np.flatnonzero(np.diff(late) > 5.0)
    starts, stops = np.r_[late[0], late[breaks + 1]], np.r_[late[breaks], late[-1]]
    spans = [{"from": time.strftime("%H:%M:%S", time.localtime(a)), "seconds": round(float(b - a), 1),
              "windows": int(((late >= a) & (late <= b)).sum()), "max_lag_s": round(float(lag[(ends >= a) & (ends <= b)].max()), 1)}
             for a, b in zip(starts, stops, strict=True)]
    return sorted(spans, key=lambda x: -x["windows"])[:5]


def drift_alerts(db: str, drifted: set[str]) -> dict[str, int]:
    """Device drift alerts: on the drifted devices (found) and on the others (false)."""
    named = {n for (n,) in _rows(db, "SELECT DISTINCT name FROM alerts WHERE kind = 'drift' AND scope = 'device'")}
    groups = {n for (n,) in _rows(db, "SELECT DISTINCT name FROM alerts WHERE kind = 'drift' AND scope = 'group'")}
    return {"drifted_devices": len(drifted), "alerted": len(named & drifted), "false_alerts": len(named - drifted),
            "groups_alerted": len(groups)}


def cli_timing(args: list[str], *, repeat: int = 3) -> dict[str, Any]:
    """Run an edgekit command in this process ``repeat`` times: its seconds (median, max) and the last JSON output."""
    from click.testing import CliRunner

    from edgekit.cli.main import cli

    times, doc = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        r = CliRunner().invoke(cli, args)
        times.append(time.perf_counter() - t)
        if r.exit_code != 0:
            raise RuntimeError(f"edgekit {' '.join(args)} exited {r.exit_code}: {r.output[-500:]} {r.exception!r}")
        doc = json.loads(r.stdout)
    return {"median_s": statistics.median(times), "max_s": max(times), "doc": doc}


def _pg_parts(db: str) -> list[str]:
    return [n for (n,) in _rows(db, "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                                    "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'telemetry'")]


def _pg_size(db: str, *tables: str) -> int:
    return sum(int(_rows(db, "SELECT pg_total_relation_size(?::regclass)", (t,))[0][0]) for t in tables)


def _vacuum(db: str) -> None:
    """VACUUM FULL: the rows of a long month are written once and compact (the current hour's are rewritten, and
    autovacuum reclaims their old versions); measured right after ingest, the dead versions would count."""
    import psycopg

    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("VACUUM FULL ANALYZE")


#: what each kind of row costs: its table and that table's indexes (SQLite lists them; PostgreSQL's total relation size
#: has them); ``rollup_keys`` has a row per device or group, version and writer, not per hour: counted apart
_TABLES = {"telemetry": ("telemetry",), "totals": ("totals",), "rollups": ("rollups",), "rollup_keys": ("rollup_keys",), "series": ("series",)}
_SQLITE_INDEXES = {"telemetry": ("sqlite_autoindex_telemetry_1", "telemetry_by_end"), "totals": (), "rollups": ("rollups_by_hour",),
                   "rollup_keys": ("sqlite_autoindex_rollup_keys_1",), "series": ("sqlite_autoindex_series_1", "series_by_device")}


def storage_bytes(db: str, *, empty: str | None = None) -> dict[str, float]:
    """Measured bytes per raw window, per running-totals row and per roll-up row (table and index pages over rows).

    ``empty``: a PostgreSQL database with the same (empty) tables: what every table and index costs before
    its first row (a few pages each) is not counted per row. PostgreSQL's raw windows are measured as ingest left
    them, before the VACUUM FULL: they are only ever inserted (no dead rows to leave out), and a rebuilt index
    would be packed tighter than the one ingest grows (keys arrive device after device, not in key order).
    """
    if db.startswith("postgresql://"):
        parts = _pg_parts(db)
        raw = _pg_size(db, *parts) - (_pg_size(empty, *_pg_parts(empty)) / max(1, len(_pg_parts(empty))) * len(parts) if empty else 0)
        _vacuum(db)
        size = {k: _pg_size(db, *ts) - (_pg_size(empty, *ts) if empty else 0) for k, ts in _TABLES.items() if k != "telemetry"}
    else:
        pages = {str(n): int(s) for n, s in _rows(db, "SELECT name, SUM(pgsize) FROM dbstat GROUP BY name")}
        size = {k: sum(pages.get(n, 0) for n in (*ts, *_SQLITE_INDEXES[k])) for k, ts in _TABLES.items()}
        raw = size.pop("telemetry")
    count = {t: int(_rows(db, f"SELECT COUNT(*) FROM {t}")[0][0]) for t in ("telemetry", "totals", "rollups", "rollup_keys")}
    group_share = _rows(db, "SELECT AVG(LENGTH(r.data)) FROM rollups r JOIN rollup_keys k ON k.id = r.key WHERE k.scope = 'group'")[0][0]
    return {"raw_per_window": raw / max(1, count["telemetry"]), "totals_per_row": size["totals"] / max(1, count["totals"]),
            "rollup_per_row": size["rollups"] / max(1, count["rollups"]), "group_rollup_extra": float(group_share or 0.0),
            "per_rollup_key": size["rollup_keys"] / max(1, count["rollup_keys"]),
            "keys_per_subject": count["rollup_keys"] / max(1, int(_rows(db, "SELECT COUNT(*) FROM (SELECT DISTINCT scope, name FROM rollup_keys) s")[0][0])),
            "windows": count["telemetry"], "totals_rows": count["totals"], "rollup_rows": count["rollups"]}


async def _publish(port: int, model: Path, messages: list[tuple[int, int, float]], *, window: int = 500) -> int:
    """Publish windows (device index, seq, end) QoS 1 on one connection, ``window`` unacknowledged at most; returns those acknowledged."""
    t = Templates(model, samples=600)
    done = asyncio.Event()
    state = {"acked": 0, "inflight": 0}
    free = asyncio.Semaphore(window)

    def ack(seq: int) -> None:
        state["acked"] += 1
        free.release()
        if state["acked"] == len(messages):
            done.set()

    loop = asyncio.get_running_loop()
    _, link = await loop.create_connection(lambda: Link(ack), "127.0.0.1", port)
    assert link.transport is not None
    link.transport.write(connect_packet(f"bench-backlog-{random.randrange(10**6)}", ("edgekit/v1/bench/lwt", b"gone"), 300))
    await link.connected
    for n, (i, seq, end) in enumerate(messages, 1):
        await free.acquire()
        link.publish(f"edgekit/v1/{device_name(i)}/telemetry", t.payload(i, seq, end - 60, end), n)
    await asyncio.wait_for(done.wait(), 600)
    link.transport.close()
    return state["acked"]


def backlog(port: int, model: Path, *, devices: int, per_device: int, duplicates: float, seed: int = 1) -> dict[str, int]:
    """Publish ``devices × per_device`` distinct windows (an hour's worth, a minute apart), plus a share published twice."""
    rng = random.Random(seed)
    now = time.time()
    distinct = [(i, k + 1, now - (per_device - k) * 60.0) for k in range(per_device) for i in range(devices)]
    repeats = rng.sample(distinct, int(len(distinct) * duplicates))
    acked = asyncio.run(_publish(port, model, distinct + repeats))
    return {"distinct": len(distinct), "repeated": len(repeats), "acknowledged": acked}
