"""The embedded :class:`~edgekit.monitor.store.base.FleetStore`: one SQLite file (the default, ``--db fleet.sqlite``).

WAL mode: readers (queries, ``fleet status --db``) never block the writer, and several collectors
on one machine can share one file, each under its own writer slot
(:mod:`edgekit.monitor.store.writer`). Writes go through one connection per store, one
transaction at a time; reads use a connection per thread. What is kept is described in
:mod:`edgekit.monitor.store.schema` (an on-disk format: files written by earlier versions are
migrated when opened, their windows folded into the running totals once).

Raw windows older than the raw retention are deleted in chunks, so ingestion goes on meanwhile.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from device_agent.contract.protocol import TelemetryMessage, decode
from edgekit.errors import InputError
from edgekit.monitor.store.codec import unpack
from edgekit.monitor.store.db import SQLITE, Db
from edgekit.monitor.store.maintenance import migrate, prune_aggregates, record_pruned
from edgekit.monitor.store.schema import LATEST
from edgekit.monitor.store.schema import SQLITE as STEPS
from edgekit.monitor.store.sql import _RAW_INSERT, SqlStore

__all__ = ["SqliteStore"]

#: raw windows deleted per transaction when pruning (ingestion takes turns with each)
PRUNE_CHUNK = 20_000


class SqliteStore(SqlStore):
    """The embedded store: one SQLite file (or ``":memory:"``, one connection for everything).

    Args:
        path: the database file (created if missing; its directory must exist).
        busy_timeout_s: how long a writer waits for another process's transaction.
        holder: this process's name in the writer leases.
    """

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 10.0, holder: str | None = None) -> None:
        super().__init__(SQLITE, holder=holder)
        self.path = str(path)
        self._busy_ms = int(busy_timeout_s * 1000)
        self._memory = self.path == ":memory:"
        if not self._memory:
            parent = Path(self.path).parent
            if not parent.is_dir():
                raise InputError(f"cannot create the fleet database {self.path}: directory {parent} does not exist")
        self._wlock = threading.RLock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        try:
            self._conn = self._connect()
            legacy = self._conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'devices'").fetchone() is not None and \
                self._conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'schema_version'").fetchone() is None
            # a store already at the latest schema is opened without the write lock: `fleet status` beside a collector
            # writing 1,000 windows a second would otherwise queue for it behind every batch (and time out)
            applied = [] if self._version() == LATEST else migrate(self._write, STEPS, where=self.path, legacy=legacy)
        except sqlite3.DatabaseError as e:
            raise InputError(f"{self.path} is not a usable fleet database: {e}") from None
        if 2 in applied and legacy:
            self._backfill()

    def _version(self) -> int | None:
        """The schema version, read without a lock (None: no ``schema_version`` table yet)."""
        if self._conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'schema_version'").fetchone() is None:
            return None
        row = self._conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self._busy_ms / 1000, check_same_thread=False, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
        if not self._memory:
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    # --- connections -----------------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[Db]:
        with self._wlock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield Db(self._conn, SQLITE)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[Db]:
        if self._memory:
            with self._wlock:
                yield Db(self._conn, SQLITE)
            return
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
            with self._wlock:
                self._readers.append(conn)
        yield Db(conn, SQLITE)

    def close(self) -> None:
        with self._wlock:
            for c in self._readers:
                c.close()
            self._readers.clear()
            self._conn.close()

    def _insert_raw(self, db: Db, rows: list[tuple[Any, ...]]) -> list[bool]:
        # one writer at a time (BEGIN IMMEDIATE): which keys exist is known before inserting, and one executemany
        # replaces a statement per row
        keys = [(r[0], r[1]) for r in rows]
        have: set[tuple[str, int]] = set()
        for i in range(0, len(keys), 200):
            part = keys[i:i + 200]
            # (device = ? AND seq = ?) OR ...: an index search per key ("(device, seq) IN (VALUES ...)" scans the table)
            have |= {(d, int(s)) for d, s in db.rows("SELECT device, seq FROM telemetry WHERE "
                                                       + " OR ".join(["(device = ? AND seq = ?)"] * len(part)), [x for k in part for x in k])}
        fresh = []
        for k in keys:
            fresh.append(k not in have)
            have.add(k)  # a repeat inside the batch is not new
        db.many(_RAW_INSERT, [r for r, f in zip(rows, fresh, strict=True) if f])
        return fresh

    # --- retention -------------------------------------------------------------------------------------

    def prune(self, before: float, *, raw_before: float | None = None, minutes_before: float | None = None) -> int:
        raw_before = before if raw_before is None else raw_before
        with self._write() as db:
            # by the window_end index: left to choose, SQLite scans every raw window in (device, seq) order to save
            # the GROUP BY's sort, ~25 s under the write lock at 4 million windows (ingestion stood still meanwhile)
            record_pruned(db, "telemetry INDEXED BY telemetry_by_end", raw_before)
        removed = 0
        while True:
            with self._write() as db:
                n = db.run("DELETE FROM telemetry WHERE rowid IN (SELECT rowid FROM telemetry WHERE window_end < ? LIMIT ?)",
                           (raw_before, PRUNE_CHUNK))
            removed += n
            if n < PRUNE_CHUNK:
                break
        prune_aggregates(self._write, before=before, raw_before=raw_before,
                         minutes_before=raw_before if minutes_before is None else max(minutes_before, raw_before))
        with self._lock:
            self._groups.clear()
            self._pruned.clear()
        return removed

    # --- migration ---------------------------------------------------------------------------------------

    def _backfill(self) -> None:
        """Fold the windows of a database written before running totals existed into them (once, when migrated)."""
        last = -1
        while True:
            with self._read() as db:
                rows = db.rows("SELECT rowid, payload FROM telemetry WHERE rowid > ? ORDER BY rowid LIMIT 2000", (last,))
            if not rows:
                return
            last = int(rows[-1][0])
            msgs = [m for m in (decode(unpack(p)) for _, p in rows) if isinstance(m, TelemetryMessage)]
            with self._lock, self._write() as db:
                if self.writer.slot is None:
                    self.writer.claim(db)
                self._know(db, {m.device for m in msgs})
                for m in msgs:
                    self.writer.fold(db, m, self._groups.get(m.device, "default"))
                self._seen(db, msgs)
                self.writer.flush(db)
            time.sleep(0)  # let other threads in between chunks
