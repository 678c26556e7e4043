"""The embedded :class:`~edgekit.monitor.store.base.FleetStore`: one SQLite file.

WAL mode, so several collectors on one machine can share one file and readers never block the
writer. What is kept (the schema below is the on-disk format; keep it compatible):

- ``devices``     last known state per device: group, online/offline, model, artifact, last seen
- ``telemetry``   every telemetry window as received (deduplicated on ``(device, seq)``), with the
                  model version it was measured on and the id of the collector that ingested it
- ``refs``        drift reference profile and baseline accuracy per (model, version), from the
                  manifests the operator registered or the deploy commands the collector saw
- ``drift_state`` the last verdict per (scope, name, model, version, feature) and since when
- ``alerts``      every alert raised (also published on MQTT)
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from device_agent.contract.manifest import FeatureProfile
from device_agent.contract.protocol import StateMessage, TelemetryMessage, decode
from edgekit.errors import InputError
from edgekit.monitor.store.base import UNKNOWN, Alert, DeviceRecord, DriftState, Reference

__all__ = ["SqliteStore", "open_store"]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    device TEXT PRIMARY KEY, grp TEXT NOT NULL DEFAULT 'default', status TEXT NOT NULL DEFAULT 'unknown',
    model TEXT, version TEXT, artifact TEXT, last_seen REAL NOT NULL, agent_version TEXT);
CREATE TABLE IF NOT EXISTS telemetry (
    device TEXT NOT NULL, seq INTEGER NOT NULL, boot INTEGER NOT NULL, ts REAL NOT NULL,
    window_start REAL NOT NULL, window_end REAL NOT NULL, model TEXT NOT NULL, version TEXT NOT NULL,
    samples INTEGER NOT NULL, requests INTEGER NOT NULL, collector TEXT NOT NULL, payload TEXT NOT NULL,
    PRIMARY KEY (device, seq));
CREATE INDEX IF NOT EXISTS telemetry_by_end ON telemetry (window_end);
CREATE INDEX IF NOT EXISTS telemetry_by_device ON telemetry (device, model, version, window_end);
CREATE TABLE IF NOT EXISTS refs (
    model TEXT NOT NULL, version TEXT NOT NULL, features TEXT NOT NULL, accuracy TEXT NOT NULL, source TEXT NOT NULL,
    registered REAL NOT NULL, PRIMARY KEY (model, version));
CREATE TABLE IF NOT EXISTS drift_state (
    scope TEXT NOT NULL, name TEXT NOT NULL, model TEXT NOT NULL, version TEXT NOT NULL, feature TEXT NOT NULL,
    level TEXT NOT NULL, since REAL NOT NULL, updated REAL NOT NULL, psi REAL,
    PRIMARY KEY (scope, name, model, version, feature));
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, kind TEXT NOT NULL, scope TEXT NOT NULL, name TEXT NOT NULL,
    model TEXT NOT NULL, version TEXT NOT NULL, level TEXT NOT NULL, payload TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS alerts_by_name ON alerts (scope, name, ts);
"""


class SqliteStore:
    """The embedded :class:`FleetStore`: one SQLite file (or ``":memory:"``), WAL, one lock per store."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 10.0) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            parent = Path(self.path).parent
            if not parent.is_dir():
                raise InputError(f"cannot create the fleet database {self.path}: directory {parent} does not exist")
        try:
            self._db = sqlite3.connect(self.path, timeout=busy_timeout_s, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise InputError(f"{self.path} is not a usable fleet database: {e}") from None
        self._lock = threading.RLock()

    # --- plumbing ----------------------------------------------------------------------------------

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _exec(self, sql: str, args: Sequence[Any] = ()) -> int:
        with self._lock:
            return self._db.execute(sql, args).rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- devices -------------------------------------------------------------------------------------

    def record_state(self, msg: StateMessage) -> None:
        model = msg.model or {}
        self._exec(
            "INSERT INTO devices (device, grp, status, model, version, artifact, last_seen, agent_version) VALUES (?,?,?,?,?,?,?,?) "
            "ON CONFLICT(device) DO UPDATE SET grp=excluded.grp, status=excluded.status, "
            "model=COALESCE(excluded.model, devices.model), version=COALESCE(excluded.version, devices.version), "
            "artifact=COALESCE(excluded.artifact, devices.artifact), last_seen=MAX(devices.last_seen, excluded.last_seen), "
            "agent_version=excluded.agent_version",
            (msg.device, msg.group or "default", str(msg.status), model.get("name"), model.get("version"), model.get("artifact"),
             msg.ts, msg.agent_version))

    def _seen(self, msg: TelemetryMessage) -> None:
        model = msg.model or {}
        self._exec(
            "INSERT INTO devices (device, status, model, version, last_seen) VALUES (?, 'unknown', ?, ?, ?) "
            "ON CONFLICT(device) DO UPDATE SET last_seen=MAX(devices.last_seen, excluded.last_seen), "
            "model=COALESCE(excluded.model, devices.model), version=COALESCE(excluded.version, devices.version)",
            (msg.device, model.get("name"), model.get("version"), msg.ts))

    def devices(self, *, group: str | None = None) -> list[DeviceRecord]:
        sql = "SELECT device, grp, status, model, version, artifact, last_seen, agent_version FROM devices"
        rows = self._rows(sql + (" WHERE grp = ?" if group else "") + " ORDER BY device", (group,) if group else ())
        return [DeviceRecord(*r) for r in rows]

    def device(self, device: str) -> DeviceRecord | None:
        rows = self._rows("SELECT device, grp, status, model, version, artifact, last_seen, agent_version FROM devices WHERE device = ?",
                          (device,))
        return DeviceRecord(*rows[0]) if rows else None

    # --- telemetry -----------------------------------------------------------------------------------

    def add_telemetry(self, msg: TelemetryMessage, payload: bytes, *, collector: str = "") -> bool:
        """Store one window; False when ``(device, seq)`` was already stored (a QoS 1 repeat)."""
        model = msg.model or {}
        start, end = float(msg.window.get("start", msg.ts)), float(msg.window.get("end", msg.ts))
        with self._lock:
            new = self._exec(
                "INSERT OR IGNORE INTO telemetry (device, seq, boot, ts, window_start, window_end, model, version, samples, requests, "
                "collector, payload) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (msg.device, msg.seq, msg.boot, msg.ts, start, end, model.get("name") or UNKNOWN, model.get("version") or UNKNOWN,
                 msg.samples, msg.requests, collector, payload.decode() if isinstance(payload, bytes) else payload)) == 1
            if new:
                self._seen(msg)
        return new

    def _decode(self, rows: list[tuple[Any, ...]]) -> list[TelemetryMessage]:
        out = []
        for (payload,) in rows:
            msg = decode(payload)
            if isinstance(msg, TelemetryMessage):
                out.append(msg)
        return out

    def telemetry(self, *, device: str | None = None, group: str | None = None, since: float | None = None,
                  model: str | None = None, version: str | None = None, collector: str | None = None) -> list[TelemetryMessage]:
        """Windows matching every given filter, oldest first (``since`` applies to the window's end)."""
        where: list[str] = []
        args: list[Any] = []
        for col, value in (("t.device", device), ("d.grp", group), ("t.model", model), ("t.version", version), ("t.collector", collector)):
            if value is not None:
                where.append(f"{col} = ?")
                args.append(value)
        if since is not None:
            where.append("t.window_end >= ?")
            args.append(since)
        sql = "SELECT t.payload FROM telemetry t LEFT JOIN devices d ON d.device = t.device"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return self._decode(self._rows(sql + " ORDER BY t.window_end, t.device, t.seq", args))

    def recent(self, device: str, model: str, version: str, *, samples: int, since: float) -> list[TelemetryMessage]:
        """The newest windows of one device and model version, newest first, until ``samples`` rows are covered."""
        out: list[TelemetryMessage] = []
        total = 0
        with self._lock:
            cur = self._db.execute(
                "SELECT payload, samples FROM telemetry WHERE device = ? AND model = ? AND version = ? AND window_end >= ? "
                "ORDER BY window_end DESC, seq DESC", (device, model, version, since))
            for payload, n in cur:
                out.extend(self._decode([(payload,)]))
                total += n
                if total >= samples:
                    break
            cur.close()
        return out

    def version_history(self, device: str) -> list[tuple[str, str, float]]:
        """(model, version, first window start) per model version the device reported, oldest first."""
        rows = self._rows("SELECT model, version, MIN(window_start) AS first FROM telemetry WHERE device = ? GROUP BY model, version "
                          "ORDER BY first", (device,))
        return [(m, v, float(t)) for m, v, t in rows]

    def prune(self, before: float) -> int:
        """Forget telemetry windows that ended before ``before`` (and alerts raised before it)."""
        with self._lock:
            n = self._exec("DELETE FROM telemetry WHERE window_end < ?", (before,))
            self._exec("DELETE FROM alerts WHERE ts < ?", (before,))
        return n

    # --- references ----------------------------------------------------------------------------------

    def add_reference(self, ref: Reference) -> None:
        self._exec("INSERT OR REPLACE INTO refs (model, version, features, accuracy, source, registered) VALUES (?,?,?,?,?,?)",
                   (ref.model, ref.version, json.dumps([f.to_dict() for f in ref.features]), json.dumps(ref.accuracy), ref.source, time.time()))

    def reference(self, model: str, version: str) -> Reference | None:
        rows = self._rows("SELECT features, accuracy, source FROM refs WHERE model = ? AND version = ?", (model, version))
        if not rows:
            return None
        features, accuracy, source = rows[0]
        return Reference(model, version, tuple(FeatureProfile.from_dict(f, f"refs[{model} {version}]") for f in json.loads(features)),
                         {k: float(v) for k, v in json.loads(accuracy).items()}, source)

    def references(self) -> list[tuple[str, str]]:
        return [(m, v) for m, v in self._rows("SELECT model, version FROM refs ORDER BY model, version")]

    # --- drift state and alerts ---------------------------------------------------------------------

    def drift_state(self, scope: str, name: str, model: str, version: str) -> dict[str, DriftState]:
        rows = self._rows("SELECT feature, level, since, updated, psi FROM drift_state WHERE scope=? AND name=? AND model=? AND version=?",
                          (scope, name, model, version))
        return {r[0]: DriftState(*r) for r in rows}

    def latest_drift(self, scope: str, name: str) -> tuple[str, str, dict[str, DriftState]] | None:
        """The drift state of the model version most recently judged for ``name``."""
        rows = self._rows("SELECT model, version FROM drift_state WHERE scope=? AND name=? ORDER BY updated DESC LIMIT 1", (scope, name))
        if not rows:
            return None
        model, version = rows[0]
        return model, version, self.drift_state(scope, name, model, version)

    def set_drift_state(self, scope: str, name: str, model: str, version: str, states: Sequence[DriftState]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for s in states:
                    self._db.execute(
                        "INSERT OR REPLACE INTO drift_state (scope, name, model, version, feature, level, since, updated, psi) "
                        "VALUES (?,?,?,?,?,?,?,?,?)", (scope, name, model, version, s.feature, s.level, s.since, s.updated, s.psi))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def add_alert(self, payload: dict[str, Any], *, ts: float | None = None) -> Alert:
        """Keep an alert message; its columns come from the message's envelope."""
        a = Alert.from_payload(0, time.time() if ts is None else ts, payload)
        with self._lock:
            cur = self._db.execute("INSERT INTO alerts (ts, kind, scope, name, model, version, level, payload) VALUES (?,?,?,?,?,?,?,?)",
                                   (a.ts, a.kind, a.scope, a.name, a.model, a.version, a.level, json.dumps(payload)))
            return dataclasses.replace(a, id=int(cur.lastrowid or 0))

    def alerts(self, *, scope: str | None = None, name: str | None = None, since: float | None = None, limit: int = 100) -> list[Alert]:
        """Newest first."""
        where: list[str] = []
        args: list[Any] = []
        for col, value in (("scope", scope), ("name", name)):
            if value is not None:
                where.append(f"{col} = ?")
                args.append(value)
        if since is not None:
            where.append("ts >= ?")
            args.append(since)
        sql = "SELECT id, ts, kind, scope, name, model, version, level, payload FROM alerts"
        sql += (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC LIMIT ?"
        return [Alert(i, ts, kind, sc, nm, model, version, level, json.loads(payload))
                for i, ts, kind, sc, nm, model, version, level, payload in self._rows(sql, [*args, limit])]


def open_store(path: str | Path) -> SqliteStore:
    """The fleet database at ``path`` (created if missing)."""
    return SqliteStore(path)
