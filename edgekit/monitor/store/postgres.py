"""The fleet store past one machine: PostgreSQL (``--db postgresql://user@host:5432/fleet``), psycopg 3 and a connection pool.

Several collectors on several hosts share one database (and one MQTT shared subscription): raw
inserts are idempotent on ``(device, seq)`` and only the insert that won adds the window to the
running totals, each collector under its own writer slot (:mod:`edgekit.monitor.store.writer`), so
nothing is counted twice and collectors never wait for each other's rows.

Raw windows are partitioned by hour (declarative range partitions on ``window_end``, one table per
UTC hour, created ahead and on demand); retention drops whole partitions, so an hour of raw windows
goes at once, without a ``DELETE`` or the vacuum it would need. A partition goes once it lies
entirely before the raw retention's cut (its last window too old), so no window is dropped before
its time, and the disk holds at most the retention plus one hour (with the default day: 24-25
hours). Databases created before schema 4 have day partitions: they go by the same rule, a day
after their last hour (and hourly ones are created from then on). (Running totals and roll-ups are
unaffected: reports and verdicts never read raw windows.) The schema is versioned
(:mod:`edgekit.monitor.store.schema`); concurrent collectors migrate one at a time (an advisory lock).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from edgekit.errors import InputError
from edgekit.monitor.store.db import POSTGRES, Db
from edgekit.monitor.store.maintenance import migrate, prune_aggregates, record_pruned
from edgekit.monitor.store.schema import POSTGRES as STEPS
from edgekit.monitor.store.sql import SqlStore

__all__ = ["PostgresStore"]

#: the width of a raw-window partition: the disk holds up to the raw retention plus this much
PART_S = 3600
_BOUNDS = re.compile(r"FROM \('?(-?\d+(?:\.\d+)?)'?\) TO \('?(-?\d+(?:\.\d+)?)'?\)")
#: serialises schema migrations between processes
_MIGRATION_LOCK = "SELECT pg_advisory_xact_lock(7224151)"


def _needs() -> Any:
    try:
        import psycopg
        import psycopg_pool
    except ImportError:
        raise InputError("a postgresql:// fleet database needs the postgres extra (psycopg 3): pip install 'edgekit[postgres]'") from None
    return psycopg, psycopg_pool


def shown(url: str) -> str:
    """``url`` without its password (for messages)."""
    from urllib.parse import urlsplit

    u = urlsplit(url)
    if u.password is None:
        return url
    return u._replace(netloc=u.netloc.replace(f":{u.password}@", ":***@")).geturl()


_RAW_INSERT = ("INSERT INTO telemetry (device, seq, window_end, collector, stored, payload) "
               "SELECT * FROM unnest(?::text[], ?::bigint[], ?::float8[], ?::text[], ?::float8[], ?::bytea[]) "
               "ON CONFLICT DO NOTHING RETURNING device, seq")

class PostgresStore(SqlStore):
    """The server store (see the module docs).

    Args:
        url: ``postgresql://user[:password]@host[:port]/database`` (libpq's other parameters as query arguments).
        holder: this process's name in the writer leases.
        max_connections: the pool's size (ingest, evaluation and queries each take one).
    """

    def __init__(self, url: str, *, holder: str | None = None, max_connections: int = 6) -> None:
        super().__init__(POSTGRES, holder=holder)
        psycopg, psycopg_pool = _needs()
        self.url = url
        self.where = shown(url)
        self._psycopg = psycopg
        self._transient = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
        self._parts: set[int] = set()  # hours (since the epoch) whose partition is known to exist
        self._parts_lock = threading.Lock()
        try:
            psycopg.connect(url, connect_timeout=10).close()  # fail at once, with the server's word, rather than after the pool's retries
            self._pool = psycopg_pool.ConnectionPool(url, min_size=1, max_size=max_connections, kwargs={"autocommit": True},
                                                     open=True, timeout=30, name="edgekit-fleet")
            self._pool.wait(timeout=15)
            migrate(self._write, STEPS, where=self.where, lock=_MIGRATION_LOCK)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as e:
            self._close_pool()
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InputError(f"cannot use the fleet database {self.where}: {first}; check --db and that PostgreSQL runs there") from None
        self._ensure_hours(time.time())

    # --- connections -----------------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[Db]:
        with self._pool.connection() as conn, conn.transaction():
            yield Db(conn, POSTGRES)

    @contextmanager
    def _read(self) -> Iterator[Db]:
        with self._pool.connection() as conn:
            yield Db(conn, POSTGRES)


    def close(self) -> None:
        self._close_pool()

    def _close_pool(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.close()

    # --- raw windows: hour partitions -------------------------------------------------------------------

    def _before_insert(self, rows: list[tuple[Any, ...]]) -> None:
        self._ensure({int(r[2] // PART_S) for r in rows})

    def _ensure_hours(self, now: float) -> None:
        """This hour's partition and the next (windows arrive a little ahead of their hour now and then)."""
        hour = int(now // PART_S)
        self._ensure({hour, hour + 1})

    def _ensure(self, hours: set[int]) -> None:
        with self._parts_lock:
            missing = hours - self._parts
        for hour in sorted(missing):
            name = time.strftime("telemetry_p%Y%m%d%H", time.gmtime(hour * PART_S))
            try:
                with self._pool.connection() as conn:
                    conn.execute(f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF telemetry "
                                 f"FOR VALUES FROM ({hour * PART_S}) TO ({(hour + 1) * PART_S})")
            except (self._psycopg.errors.DuplicateTable, self._psycopg.errors.InvalidObjectDefinition,
                    self._psycopg.errors.UniqueViolation):
                pass  # another collector created it at the same moment, or a day partition (before schema 4) holds the hour
            with self._parts_lock:
                self._parts.add(hour)

    def _insert_raw(self, db: Db, rows: list[tuple[Any, ...]]) -> list[bool]:
        if not rows:
            return []
        # one array per column: the same statement text for every batch (prepared once per connection), where
        # a VALUES list per batch size was parsed and planned again for each batch
        # in the primary key's order (window_end, device, seq): collectors given the same windows in other orders then
        # take their key locks in one order, and one waits for the other rather than each for each (a deadlock)
        ordered = sorted(rows, key=lambda r: (r[2], r[0], r[1]))
        won = {(d, int(s)) for d, s in db.rows(_RAW_INSERT, [list(col) for col in zip(*ordered, strict=True)])}
        out = []
        for r in rows:
            key = (r[0], int(r[1]))
            out.append(key in won)
            won.discard(key)  # a repeat inside the batch is not new
        return out

    def partitions(self) -> list[tuple[str, float, float]]:
        """(table, from, to) of every raw-window partition (``window_end`` in [from, to)), oldest first."""
        with self._read() as db:
            rows = db.rows("SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                           "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'telemetry'")
        out = []
        for name, bound in rows:
            m = _BOUNDS.search(str(bound))
            if m is None:
                raise RuntimeError(f"raw-window partition {name} has bounds {bound!r}; expected FROM (x) TO (y) in seconds")
            out.append((str(name), float(m.group(1)), float(m.group(2))))
        return sorted(out, key=lambda p: p[1])

    # --- retention -------------------------------------------------------------------------------------

    def prune(self, before: float, *, raw_before: float | None = None, minutes_before: float | None = None) -> int:
        raw_before = before if raw_before is None else raw_before
        removed = 0
        with self._pool.connection() as lock:  # a session lock: one collector prunes at a time
            got = lock.execute("SELECT pg_try_advisory_lock(7224152)").fetchone()
            if not (got and got[0]):
                return 0
            try:
                for name, lo, hi in self.partitions():
                    if hi > raw_before:
                        continue  # it may hold a window still within the retention: it goes once it lies entirely before the cut
                    with self._write() as db:
                        record_pruned(db, name, hi)
                        row = db.one(f"SELECT COUNT(*) FROM {name}")
                        removed += int(row[0]) if row else 0
                        db.run(f"DROP TABLE {name}")
                    with self._parts_lock:
                        self._parts.difference_update(range(int(lo // PART_S), int(-(-hi // PART_S))))
                prune_aggregates(self._write, before=before, raw_before=raw_before,
                                 minutes_before=raw_before if minutes_before is None else max(minutes_before, raw_before))
            finally:
                lock.execute("SELECT pg_advisory_unlock(7224152)")
        with self._lock:
            self._groups.clear()
            self._pruned.clear()
        self._ensure_hours(time.time())
        return removed
