"""What both SQL backends share: the write paths of the fleet store, over :class:`~edgekit.monitor.store.db.Db`.

A backend (:mod:`~edgekit.monitor.store.sqlite`, :mod:`~edgekit.monitor.store.postgres`) gives the
connections (:meth:`SqlStore._write`, :meth:`SqlStore._read`) and the few things its database does
differently (raw inserts, partitions, pruning); the reads are in :mod:`edgekit.monitor.store.reads`.

Telemetry arrives in batches (:meth:`SqlStore.add_batch`): one transaction inserts the raw
windows (a repeat of ``(device, seq)`` changes nothing; nor does a window at or below the highest
sequence number already pruned for its device), folds the windows that were new into this
process's running totals and roll-ups (:mod:`edgekit.monitor.store.writer`), updates the devices'
latest telemetry and renews the writer lease.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

from device_agent.contract.protocol import JobUpdate, StateMessage, TelemetryMessage
from edgekit.fleet.versions import runtime_columns
from edgekit.monitor.store.base import Alert, DriftState, Reference
from edgekit.monitor.store.census import CensusReads
from edgekit.monitor.store.codec import pack
from edgekit.monitor.store.db import Db, Dialect
from edgekit.monitor.store.reads import Reads
from edgekit.monitor.store.writer import LeaseLost, Writer

__all__ = ["SqlStore"]

log = logging.getLogger("edgekit.monitor.store")

#: how often a batch is tried: a lost writer lease or a transient failure (see ``SqlStore._transient``) runs it again
_ATTEMPTS = 4
_RAW_INSERT = "INSERT INTO telemetry (device, seq, window_end, collector, stored, payload) VALUES (?,?,?,?,?,?) ON CONFLICT DO NOTHING"
_NEWER_STATE = ("(devices.boot IS NULL OR excluded.boot > devices.boot "
                "OR (excluded.boot = devices.boot AND excluded.state_seq >= devices.state_seq))")
_NEWER_TELEMETRY = ("(devices.tel_boot IS NULL OR excluded.tel_boot > devices.tel_boot "
                    "OR (excluded.tel_boot = devices.tel_boot AND excluded.tel_seq >= devices.tel_seq))")
# the runtime comes from state messages and telemetry windows alike: either may set it unless the other is of a later boot
_STATE_RUNTIME = f"({_NEWER_STATE} AND (devices.tel_boot IS NULL OR excluded.boot >= devices.tel_boot))"
_TELEMETRY_RUNTIME = f"({_NEWER_TELEMETRY} AND (devices.boot IS NULL OR excluded.tel_boot >= devices.boot))"
_RUNTIME = ("agent_version", "runtime", "runtime_validated", "runtime_status", "runtime_detail")


def _when(cond: str, col: str, value: str | None = None) -> str:
    return f"{col} = CASE WHEN {cond} THEN {value or 'excluded.' + col} ELSE devices.{col} END"


class SqlStore(Reads, CensusReads):
    """The :class:`~edgekit.monitor.store.base.FleetStore` over SQL (see the module docs); a backend subclasses it.

    Args:
        dialect: the backend's SQL words.
        holder: who this process is in the writer leases (default: a random id).
    """

    def __init__(self, dialect: Dialect, *, holder: str | None = None) -> None:
        self.dialect = dialect
        self.writer = Writer(holder or f"edgekit-{uuid.uuid4().hex[:12]}")
        self._lock = threading.RLock()
        self._groups: dict[str, str] = {}  # device -> group, as the database has it (for group roll-ups)
        self._pruned: dict[str, int] = {}  # device -> highest sequence number whose raw window was pruned
        self._store_id: str | None = None
        g = dialect.greatest
        # a message without a runtime (an older agent, the Last Will) keeps the one known
        keep = [(c, f"COALESCE(excluded.{c}, devices.{c})") for c in _RUNTIME]
        self._seen_sql = (
            "INSERT INTO devices (device, status, model, version, last_seen, tel_boot, tel_seq, requests, p95_ms, outbox, "
            f"{', '.join(_RUNTIME)}) VALUES (?, 'unknown', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device) DO UPDATE SET "
            f"last_seen = {g}(devices.last_seen, excluded.last_seen), model = COALESCE(excluded.model, devices.model), "
            "version = COALESCE(excluded.version, devices.version), "
            + ", ".join([_when(_TELEMETRY_RUNTIME, c, v) for c, v in keep]
                        + [_when(_NEWER_TELEMETRY, c) for c in ("requests", "p95_ms", "outbox", "tel_seq", "tel_boot")]))
        self._state_sql = (
            "INSERT INTO devices (device, grp, status, model, version, artifact, last_seen, boot, state_seq, "
            f"{', '.join(_RUNTIME)}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (device) DO UPDATE SET "
            f"last_seen = {g}(devices.last_seen, excluded.last_seen), "
            + ", ".join([_when(_NEWER_STATE, c) for c in ("grp", "status")]
                        + [_when(_STATE_RUNTIME, c, v) for c, v in keep]
                        + [_when(_NEWER_STATE, c, f"COALESCE(excluded.{c}, devices.{c})") for c in ("model", "version", "artifact")]
                        + [_when(_NEWER_STATE, c) for c in ("state_seq", "boot")]))

    # --- what a backend provides ------------------------------------------------------------------------

    def _write(self) -> AbstractContextManager[Db]:
        """One transaction (serialised within this process)."""
        raise NotImplementedError

    def _rows(self) -> AbstractContextManager[Db]:
        """Updates of rows that several collectors write (the devices' latest telemetry and verdict): a short
        transaction of their own, in device order. Inside the ingest transaction, those row locks would be
        held until a whole batch commits, and collectors sharing a database would wait for each other."""
        return self._write()

    def _insert_raw(self, db: Db, rows: list[tuple[Any, ...]]) -> list[bool]:
        """Insert raw windows (:data:`_RAW_INSERT` columns); per row, whether it was new."""
        return [db.run(_RAW_INSERT, r) == 1 for r in rows]

    def _before_insert(self, rows: list[tuple[Any, ...]]) -> None:
        """Anything the raw rows need first (PostgreSQL: their hour partitions)."""

    #: errors after which a batch's transaction (rolled back) may simply run again: PostgreSQL's deadlock and serialization
    #: failures. Collectors take rows in key order, so they should not deadlock; should they, the batch is not lost.
    _transient: tuple[type[Exception], ...] = ()

    def close(self) -> None:
        raise NotImplementedError

    # --- devices, jobs, rollouts ---------------------------------------------------------------------

    @property
    def store_id(self) -> str:
        if self._store_id is None:
            with self._write() as db:
                row = db.one("SELECT value FROM meta WHERE key = 'store_id'")
                if row is None:
                    db.run("INSERT INTO meta (key, value) VALUES ('store_id', ?) ON CONFLICT (key) DO NOTHING", (uuid.uuid4().hex,))
                    row = db.one("SELECT value FROM meta WHERE key = 'store_id'")
                assert row is not None
                self._store_id = str(row[0])
        return self._store_id

    def record_state(self, msg: StateMessage) -> None:
        self.record_states([msg])

    def record_states(self, msgs: Sequence[StateMessage]) -> None:
        rows = [(m.device, m.group or "default", str(m.status), (m.model or {}).get("name"), (m.model or {}).get("version"),
                 (m.model or {}).get("artifact"), m.ts, m.boot, m.seq, *runtime_columns(m)) for m in msgs]
        rows.sort(key=lambda r: r[0])  # rows that other collectors write too: locked in one order by all (no deadlock)
        with self._write() as db:
            db.many(self._state_sql, rows)
            for m in msgs:
                self._groups.pop(m.device, None)  # read again: an older state may not have changed it

    def record_jobs(self, updates: Sequence[JobUpdate]) -> None:
        if not updates:
            return
        g = self.dialect.greatest
        with self._write() as db:
            db.many("INSERT INTO devices (device, status, last_seen) VALUES (?, 'unknown', ?) ON CONFLICT (device) DO UPDATE SET "
                    f"last_seen = {g}(devices.last_seen, excluded.last_seen)", sorted((u.device, u.ts) for u in updates))
            db.many("INSERT INTO jobs (device, job, state, reason, detail, ota_state, version, ts, boot, seq) VALUES (?,?,?,?,?,?,?,?,?,?) "
                    "ON CONFLICT (device, job) DO UPDATE SET state = excluded.state, reason = excluded.reason, detail = excluded.detail, "
                    "ota_state = excluded.ota_state, version = excluded.version, ts = excluded.ts, boot = excluded.boot, seq = excluded.seq "
                    "WHERE excluded.reason <> 'duplicate_job' AND (excluded.boot > jobs.boot "
                    "OR (excluded.boot = jobs.boot AND excluded.seq >= jobs.seq))",
                    sorted(((u.device, u.job, str(u.state), u.reason, u.detail, u.ota_state, (u.model or {}).get("version"), u.ts, u.boot,
                             u.seq) for u in updates), key=lambda r: (r[0], r[1])))
            db.many("UPDATE devices SET (job, job_state, job_reason, job_ts) = (SELECT job, state, reason, ts FROM jobs "
                    "WHERE jobs.device = devices.device ORDER BY ts DESC, job DESC LIMIT 1) WHERE device = ?",
                    [(d,) for d in sorted({u.device for u in updates})])

    def record_rollout(self, doc: dict[str, Any]) -> None:
        with self._write() as db:
            db.run("INSERT INTO rollouts (job, ts, doc) VALUES (?,?,?) ON CONFLICT (job) DO UPDATE SET ts = excluded.ts, doc = excluded.doc",
                   (str(doc["job"]), float(doc.get("ts") or time.time()), json.dumps(doc)))

    # --- telemetry -----------------------------------------------------------------------------------

    def add_telemetry(self, msg: TelemetryMessage, payload: bytes, *, collector: str = "") -> bool:
        return self.add_batch([(msg, payload)], collector=collector)[0]

    def add_batch(self, items: Sequence[tuple[TelemetryMessage, bytes]], *, collector: str = "") -> list[bool]:
        if not items:
            return []
        rows = [_raw_row(m, p, collector) for m, p in items]
        self._before_insert(rows)
        again: tuple[type[Exception], ...] = (LeaseLost, *self._transient)
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                with self._lock, self._write() as db:
                    if self.writer.slot is None:
                        self.writer.claim(db)
                    self._know(db, {m.device for m, _ in items})
                    keep = [m.seq > self._pruned.get(m.device, -1) for m, _ in items]
                    inserted = iter(self._insert_raw(db, [r for r, k in zip(rows, keep, strict=True) if k]))
                    fresh = [k and next(inserted) for k in keep]
                    winners = [m for (m, _), f in zip(items, fresh, strict=True) if f]
                    for m in winners:
                        self.writer.fold(db, m, self._groups.get(m.device, "default"))
                    self.writer.flush(db)
                with self._rows() as db:
                    self._seen(db, winners)
                return fresh
            except again as e:
                self.writer.reset()  # the transaction rolled back: what it folded in memory is void
                if attempt == _ATTEMPTS:
                    raise
                log.warning("fleet store: %s; %s", str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__,
                            "claiming a writer slot again" if isinstance(e, LeaseLost) else "running the batch again")
                time.sleep(random.uniform(0.0, 0.02 * attempt))  # apart from the other collector that ran into this one
            except BaseException:
                self.writer.reset()
                raise
        raise AssertionError("unreachable")

    def _know(self, db: Db, devices: set[str]) -> None:
        """Cache the group and the pruned sequence number of devices not seen yet."""
        unknown = sorted(d for d in devices if d not in self._groups)
        for i in range(0, len(unknown), 500):
            part = unknown[i:i + 500]
            found = db.rows(f"SELECT device, grp, pruned_seq FROM devices WHERE device IN ({','.join('?' * len(part))})", part)
            for d, grp, pruned in found:
                self._groups[d] = grp
                if pruned is not None:
                    self._pruned[d] = int(pruned)
            for d in set(part) - {r[0] for r in found}:
                self._groups[d] = "default"

    def _seen(self, db: Db, msgs: list[TelemetryMessage]) -> None:
        newest: dict[str, TelemetryMessage] = {}
        for m in msgs:
            n = newest.get(m.device)
            if n is None or (m.boot, m.seq) >= (n.boot, n.seq):
                newest[m.device] = m
        last: dict[str, float] = {}
        for m in msgs:
            last[m.device] = max(last.get(m.device, m.ts), m.ts)
        db.many(self._seen_sql, [(d, (m.model or {}).get("name"), (m.model or {}).get("version"), last[d], m.boot, m.seq, m.requests,
                                  m.latency_ms.p95 if m.latency_ms else None, m.outbox, *runtime_columns(m))
                                 for d, m in sorted(newest.items())])

    def renew(self) -> None:
        with self._lock, self._write() as db:
            if self.writer.slot is not None:
                try:
                    self.writer.renew(db)
                except LeaseLost:
                    self.writer.reset()

    # --- references, verdicts, alerts ---------------------------------------------------------------------

    def add_reference(self, ref: Reference) -> None:
        with self._write() as db:
            db.run("INSERT INTO refs (model, version, features, accuracy, source, registered) VALUES (?,?,?,?,?,?) ON CONFLICT (model, version) "
                   "DO UPDATE SET features = excluded.features, accuracy = excluded.accuracy, source = excluded.source, "
                   "registered = excluded.registered",
                   (ref.model, ref.version, json.dumps([f.to_dict() for f in ref.features]), json.dumps(ref.accuracy), ref.source, time.time()))

    def set_drift_state(self, scope: str, name: str, model: str, version: str, states: Sequence[DriftState]) -> None:
        self.set_drift_states([((scope, name, model, version), states)])

    def set_drift_states(self, items: Sequence[tuple[tuple[str, str, str, str], Sequence[DriftState]]]) -> None:
        # in key order, as every collector writes them (see record_states)
        rows = sorted(((*key, s.feature, s.level, s.since, s.updated, s.psi) for key, states in items for s in states), key=lambda r: r[:5])
        if not rows:
            return
        with self._write() as db:
            db.many("INSERT INTO drift_state (scope, name, model, version, feature, level, since, updated, psi) VALUES (?,?,?,?,?,?,?,?,?) "
                    "ON CONFLICT (scope, name, model, version, feature) DO UPDATE SET level = excluded.level, since = excluded.since, "
                    "updated = excluded.updated, psi = excluded.psi", rows)

    def set_device_drift(self, device: str, summary: dict[str, Any] | None) -> None:
        self.set_device_drifts([(device, summary)])

    def set_device_drifts(self, items: Sequence[tuple[str, dict[str, Any] | None]]) -> None:
        if not items:
            return
        with self._rows() as db:
            db.many("UPDATE devices SET drift_level = ?, drift = ? WHERE device = ?",
                    [(s["level"] if s else None, json.dumps(s) if s else None, d) for d, s in sorted(items, key=lambda i: i[0])])

    def add_alert(self, payload: dict[str, Any], *, ts: float | None = None) -> Alert:
        a = Alert.from_payload(0, time.time() if ts is None else ts, payload)
        with self._write() as db:
            row = db.one("INSERT INTO alerts (ts, kind, scope, name, model, version, level, payload) VALUES (?,?,?,?,?,?,?,?) RETURNING id",
                         (a.ts, a.kind, a.scope, a.name, a.model, a.version, a.level, json.dumps(payload)))
        return dataclasses.replace(a, id=int(row[0]) if row else 0)

    def __enter__(self) -> SqlStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _raw_row(m: TelemetryMessage, payload: bytes, collector: str) -> tuple[Any, ...]:
    """A raw window's row: the columns of :data:`_RAW_INSERT`, in order."""
    data = payload if isinstance(payload, bytes) else str(payload).encode()
    return (m.device, m.seq, float(m.window.get("end", m.ts)), collector, time.time(), pack(data))

