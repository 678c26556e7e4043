"""The fleet store's reads, shared by both SQL backends (:class:`Reads`, mixed into :class:`~edgekit.monitor.store.sql.SqlStore`).

Spans of time come from the running totals (:mod:`edgekit.monitor.store.totals`): per series, the
newest row at the end of the span minus the newest row before its first minute — two index seeks
however long the span — and the writers' series of one device and model version are added up.
Resolution is the minute (a span starting at 12:00:30 includes the windows that ended from 12:00:00);
beyond ``minutes_before`` the totals keep one row an hour, so an older start rounds down to the hour.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

from device_agent.contract.manifest import FeatureProfile
from device_agent.contract.protocol import TelemetryMessage, decode
from edgekit.monitor.store.base import (
    Alert,
    DevicePage,
    DeviceQuery,
    DeviceRecord,
    DeviceTable,
    DriftState,
    HourRow,
    JobRecord,
    Reference,
    Span,
)
from edgekit.monitor.store.codec import unpack
from edgekit.monitor.store.db import Db, Dialect
from edgekit.monitor.store.totals import Layout, Totals
from edgekit.monitor.store.writer import minute_of

__all__ = ["Reads"]

_DEVICE = "device, grp, status, model, version, artifact, last_seen, agent_version, runtime, runtime_validated, runtime_status, runtime_detail"
# the devices page's columns in the order of DeviceRow's fields (rows are built from them by position)
_ROW = ("device, grp, status, model, version, artifact, last_seen, agent_version, requests, p95_ms, outbox, job, job_state, job_reason, "
        "drift_level, drift, runtime, runtime_validated, runtime_status, runtime_detail")
# a span starting before a series' floor (older rows pruned) starts at the floor
_SPAN = ("SELECT s.device, COALESCE(d.grp, 'default'), s.model, s.version, s.layout, "
         "(SELECT data FROM totals t WHERE t.series = s.id{until} ORDER BY t.minute DESC LIMIT 1), "
         "(SELECT hi FROM totals t WHERE t.series = s.id{until} ORDER BY t.minute DESC LIMIT 1), "
         "(SELECT data FROM totals t WHERE t.series = s.id AND t.minute < {g}(?, COALESCE(s.floor, -1) + 1) "
         "ORDER BY t.minute DESC LIMIT 1), "
         "(SELECT lo FROM totals t WHERE t.series = s.id AND t.minute >= {g}(?, COALESCE(s.floor, -1) + 1){until} "
         "ORDER BY t.minute LIMIT 1) "
         "FROM series s LEFT JOIN devices d ON d.device = s.device")


class Reads:
    """Reads over :meth:`_read` (a backend gives the connection and its :class:`Dialect`)."""

    dialect: Dialect

    def _read(self) -> AbstractContextManager[Db]:
        raise NotImplementedError

    # --- spans of time ----------------------------------------------------------------------------------

    def spans(self, *, device: str | None = None, group: str | None = None, since: float, until: float | None = None) -> list[Span]:
        first = minute_of(since)
        cond = "" if until is None else " AND t.minute <= ?"
        sql = _SPAN.format(until=cond, g=self.dialect.greatest)
        u: list[Any] = [] if until is None else [minute_of(until)]
        args: list[Any] = [*u, *u, first, first, *u]
        if device is not None:
            sql, args = sql + " WHERE s.device = ?", [*args, device]
        elif group is not None:
            sql, args = sql + " WHERE d.grp = ?", [*args, group]
        with self._read() as db:
            rows = db.rows(sql, args)
        merged: dict[tuple[str, str, str], list[Any]] = {}
        for dev, grp, model, version, layout_json, head, hi, base, lo in rows:
            if head is None:
                continue
            layout = Layout.from_json(layout_json)
            t = Totals.decode(head, layout)  # arrays of its own: the base is taken off in place (no copy per series)
            if base is not None:
                t.add(Totals.decode(base, layout), -1)
            if t.empty:
                continue
            m = merged.get((dev, model, version))
            if m is None:
                merged[(dev, model, version)] = [grp, t, lo, hi]
            else:
                m[1].add(t)
                m[2], m[3] = _min(m[2], lo), _max(m[3], hi)
        return [Span(d, grp, mo, v, t, lo, hi) for (d, mo, v), (grp, t, lo, hi) in sorted(merged.items())]

    def recent_span(self, device: str, model: str, version: str, *, samples: int, since: float) -> Span | None:
        first = minute_of(since)
        with self._read() as db:
            rows = db.rows("SELECT s.id, s.layout, t.minute, t.samples, t.lo, t.hi FROM series s JOIN totals t ON t.series = s.id "
                           "WHERE s.device = ? AND s.model = ? AND s.version = ? AND t.minute >= ? ORDER BY t.minute DESC",
                           (device, model, version, first))
            if not rows:
                return None
            series = {int(r[0]): Layout.from_json(r[1]) for r in rows}
            bases = {int(r[0]): (int(r[1]), int(r[2])) for r in db.rows(
                f"SELECT s.id, (SELECT minute FROM totals t WHERE t.series = s.id AND t.minute < ? ORDER BY minute DESC LIMIT 1), "
                f"(SELECT samples FROM totals t WHERE t.series = s.id AND t.minute < ? ORDER BY minute DESC LIMIT 1) FROM series s "
                f"WHERE s.id IN ({','.join('?' * len(series))})", (first, first, *series)) if r[1] is not None}
            cut = _cut(rows, bases, samples)
            heads = {sid: next(r for r in rows if int(r[0]) == sid) for sid in series}
            wanted = [(sid, int(heads[sid][2])) for sid in series]
            for sid in series:
                below = [int(r[2]) for r in rows if int(r[0]) == sid and int(r[2]) < cut]
                m = max(below) if below else (bases[sid][0] if sid in bases else None)
                if m is not None:
                    wanted.append((sid, m))
            data = {(int(s), int(m)): d for s, m, d in db.rows(
                f"SELECT series, minute, data FROM totals WHERE {' OR '.join(['(series = ? AND minute = ?)'] * len(wanted))}",
                [x for w in wanted for x in w])}
        total: Totals | None = None
        for sid, layout in series.items():
            head_minute = int(heads[sid][2])
            older = [m for (s, m) in wanted if s == sid and m != head_minute]
            t = Totals.decode(data[(sid, head_minute)], layout).minus(Totals.decode(data[(sid, older[0])], layout) if older else None)
            total = t if total is None else total.add(t)
        assert total is not None
        lo = min(float(r[4]) for r in rows if int(r[2]) >= cut)
        hi = max(float(r[5]) for r in rows)
        return Span(device, "", model, version, total, lo, hi)

    def version_history(self, device: str) -> list[tuple[str, str, float]]:
        with self._read() as db:
            rows = db.rows("SELECT model, version, MIN(first_start) AS first FROM series WHERE device = ? AND first_start IS NOT NULL "
                           "GROUP BY model, version ORDER BY first", (device,))
        return [(m, v, float(t)) for m, v, t in rows]

    def hours(self, *, scope: str, name: str | None = None, since: float, until: float | None = None) -> list[HourRow]:
        sql = ("SELECT k.name, k.model, k.version, r.hour, r.windows, r.samples, r.requests, r.errors, r.lat_count, r.labelled, r.correct, "
               "r.lat_sum, r.lat_max, r.p95_max, r.layout, r.data FROM rollups r JOIN rollup_keys k ON k.id = r.key "
               "WHERE k.scope = ? AND r.hour >= ?")
        args: list[Any] = [scope, int(since // 3600) * 3600]
        if name is not None:
            sql, args = sql + " AND k.name = ?", [*args, name]
        if until is not None:
            sql, args = sql + " AND r.hour <= ?", [*args, until]
        with self._read() as db:
            rows = db.rows(sql + " ORDER BY r.hour, k.name, k.model, k.version", args)
        out: dict[tuple[str, str, str, int], list[Any]] = {}
        for nm, model, version, hour, *ints_, lat_sum, lat_max, p95_max, layout, data in rows:
            acc = out.setdefault((nm, model, version, int(hour)), [[0] * 7, 0.0, None, None, None])
            acc[0] = [a + int(b) for a, b in zip(acc[0], ints_, strict=True)]
            acc[1] += float(lat_sum)
            acc[2] = _max(acc[2], lat_max)
            acc[3] = _max(acc[3], p95_max)
            if data is not None:
                t = Totals.decode(data, Layout.from_json(layout))
                acc[4] = t if acc[4] is None else acc[4].add(t)
        return [HourRow(scope, nm, model, version, float(hour), w, s, r, e, (ls / lc) if lc else None, lmax, pmax, lab, cor, t)
                for (nm, model, version, hour), ([w, s, r, e, lc, lab, cor], ls, lmax, pmax, t) in out.items()]

    # --- devices, jobs, rollouts ---------------------------------------------------------------------

    def devices(self, *, group: str | None = None) -> list[DeviceRecord]:
        with self._read() as db:
            rows = db.rows(f"SELECT {_DEVICE} FROM devices" + (" WHERE grp = ?" if group else "") + " ORDER BY device",
                           (group,) if group else ())
        return [DeviceRecord(*r) for r in rows]

    def groups(self) -> list[str]:
        with self._read() as db:
            return [g for (g,) in db.rows("SELECT DISTINCT grp FROM devices ORDER BY grp")]

    def device(self, device: str) -> DeviceRecord | None:
        with self._read() as db:
            row = db.one(f"SELECT {_DEVICE} FROM devices WHERE device = ?", (device,))
        return DeviceRecord(*row) if row else None

    def device_page(self, query: DeviceQuery) -> DevicePage:
        return self.device_table(query).page()

    def device_table(self, query: DeviceQuery) -> DeviceTable:
        where, args = _device_filter(query)
        with self._read() as db:
            total = db.one(f"SELECT COUNT(*) FROM devices{where}", args)
            limit = 2**62 if query.limit is None else int(query.limit)  # both databases take LIMIT n OFFSET m
            rows = db.rows(f"SELECT {_ROW} FROM devices{where} ORDER BY device LIMIT {limit} OFFSET {int(query.offset)}", args)
        return DeviceTable(rows, int(total[0]) if total else 0, query.offset)

    def jobs(self, *, job: str | None = None, device: str | None = None) -> list[JobRecord]:
        where = [c for c, v in (("job = ?", job), ("device = ?", device)) if v is not None]
        with self._read() as db:
            rows = db.rows("SELECT device, job, state, reason, detail, ota_state, version, ts FROM jobs"
                           + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY device, ts",
                           [v for v in (job, device) if v is not None])
        return [JobRecord(*r) for r in rows]

    def rollouts(self, *, limit: int = 50) -> list[dict[str, Any]]:
        with self._read() as db:
            return [json.loads(d) for (d,) in db.rows("SELECT doc FROM rollouts ORDER BY ts DESC LIMIT ?", (limit,))]

    # --- references, verdicts, alerts ---------------------------------------------------------------------

    def reference(self, model: str, version: str) -> Reference | None:
        with self._read() as db:
            row = db.one("SELECT features, accuracy, source FROM refs WHERE model = ? AND version = ?", (model, version))
        if row is None:
            return None
        features, accuracy, source = row
        return Reference(model, version, tuple(FeatureProfile.from_dict(f, f"refs[{model} {version}]") for f in json.loads(features)),
                         {k: float(v) for k, v in json.loads(accuracy).items()}, source)

    def references(self) -> list[tuple[str, str]]:
        with self._read() as db:
            return [(m, v) for m, v in db.rows("SELECT model, version FROM refs ORDER BY model, version")]

    def drift_state(self, scope: str, name: str, model: str, version: str) -> dict[str, DriftState]:
        with self._read() as db:
            rows = db.rows("SELECT feature, level, since, updated, psi FROM drift_state WHERE scope = ? AND name = ? AND model = ? "
                           "AND version = ?", (scope, name, model, version))
        return {r[0]: DriftState(*r) for r in rows}

    def drift_states(self, keys: Sequence[tuple[str, str, str, str]]) -> dict[tuple[str, str, str, str], dict[str, DriftState]]:
        out: dict[tuple[str, str, str, str], dict[str, DriftState]] = {}
        unique = sorted(set(keys))
        with self._read() as db:
            for i in range(0, len(unique), 200):
                part = unique[i:i + 200]
                # an OR of keys: an index search each (SQLite scans the table for "(a, b) IN (VALUES ...)")
                for scope, name, model, version, *state in db.rows(
                        "SELECT scope, name, model, version, feature, level, since, updated, psi FROM drift_state WHERE "
                        + " OR ".join(["(scope = ? AND name = ? AND model = ? AND version = ?)"] * len(part)), [x for k in part for x in k]):
                    out.setdefault((scope, name, model, version), {})[state[0]] = DriftState(*state)
        return out

    def latest_drift(self, scope: str, name: str) -> tuple[str, str, dict[str, DriftState]] | None:
        with self._read() as db:
            row = db.one("SELECT model, version FROM drift_state WHERE scope = ? AND name = ? ORDER BY updated DESC LIMIT 1", (scope, name))
        if row is None:
            return None
        return row[0], row[1], self.drift_state(scope, name, row[0], row[1])

    def alerts(self, *, scope: str | None = None, name: str | None = None, since: float | None = None, limit: int = 100) -> list[Alert]:
        where = [c for c, v in (("scope = ?", scope), ("name = ?", name), ("ts >= ?", since)) if v is not None]
        with self._read() as db:
            rows = db.rows("SELECT id, ts, kind, scope, name, model, version, level, payload FROM alerts"
                           + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC LIMIT ?",
                           [*(v for v in (scope, name, since) if v is not None), limit])
        return [Alert(i, ts, kind, sc, nm, model, version, level, json.loads(payload)) for i, ts, kind, sc, nm, model, version, level, payload
                in rows]

    # --- raw windows (inspection) ------------------------------------------------------------------------

    def telemetry(self, *, device: str | None = None, group: str | None = None, since: float | None = None,
                  model: str | None = None, version: str | None = None, collector: str | None = None) -> list[TelemetryMessage]:
        where: list[str] = []
        args: list[Any] = []
        for col, value in (("t.device", device), ("d.grp", group), ("t.collector", collector)):
            if value is not None:
                where.append(f"{col} = ?")
                args.append(value)
        if since is not None:
            where.append("t.window_end >= ?")
            args.append(since)
        sql = "SELECT t.payload FROM telemetry t LEFT JOIN devices d ON d.device = t.device"
        with self._read() as db:
            rows = db.rows(sql + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY t.window_end, t.device, t.seq", args)
        out = []
        for (payload,) in rows:
            msg = decode(unpack(payload))
            if isinstance(msg, TelemetryMessage) and (model is None or (msg.model or {}).get("name", "?") == model) \
                    and (version is None or (msg.model or {}).get("version", "?") == version):
                out.append(msg)
        return out


def _cut(rows: Sequence[tuple[Any, ...]], bases: dict[int, tuple[int, int]], samples: int) -> int:
    """The newest minute from which the writers' rows (newest first) cover ``samples`` (the oldest minute when none does)."""
    heads: dict[int, int] = {}
    for r in rows:
        heads.setdefault(int(r[0]), int(r[3]))
    minutes = sorted({int(r[2]) for r in rows}, reverse=True)
    for m in minutes:
        covered = 0
        for sid, head in heads.items():
            below = [int(r[3]) for r in rows if int(r[0]) == sid and int(r[2]) < m]
            covered += head - (below[0] if below else bases.get(sid, (0, 0))[1])
        if covered >= samples:
            return m
    return minutes[-1]


def _device_filter(q: DeviceQuery) -> tuple[str, list[Any]]:
    where: list[str] = []
    args: list[Any] = []
    for col, value in (("grp", q.group), ("version", q.version), ("job_state", q.job_state), ("agent_version", q.agent_version)):
        if value is not None:
            where.append(f"{col} = ?")
            args.append(value)
    if q.runtime is not None:
        # "onnxruntime": any version of it; "onnxruntime 1.27": that release and its patches; "onnxruntime 1.27.0": that one
        name, _, version = q.runtime.replace("==", " ").partition(" ")
        exact = f"{name} {version.strip()}".strip()
        where.append("(runtime = ? OR runtime LIKE ? ESCAPE '\\')")
        args += [exact, _like(exact) + ("." if version.strip() else " ") + "%"]
    if q.runtime_status == "none":
        where.append("runtime_status IS NULL")
    elif q.runtime_status is not None:
        where.append("runtime_status = ?")
        args.append(q.runtime_status)
    if q.online is not None:
        where.append("status = 'online'" if q.online else "status <> 'online'")
    if q.drift == "none":
        where.append("drift_level IS NULL")
    elif q.drift is not None:
        where.append("drift_level = ?")
        args.append(q.drift)
    return (" WHERE " + " AND ".join(where) if where else ""), args


def _like(text: str) -> str:
    """``text`` as a literal in a LIKE pattern (escaped with a backslash)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _max(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def _min(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)
