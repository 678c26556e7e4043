"""Running totals and hourly roll-ups as windows arrive: one process's writer slot.

Several collectors may write one database. Each holds a *writer slot*: a lease in ``writers``,
renewed in every transaction it commits, and writes only the ``series``, ``totals``,
``rollup_keys`` and ``rollups`` rows of its own slot. So writers never contend for a row, each
keeps the newest row of its series in memory (no read before a write), and readers add the slots up
(:mod:`edgekit.monitor.store.reads`). A writer that stalled past its lease finds the lease gone
when it commits: the transaction rolls back (:class:`LeaseLost`), the writer forgets what it held
in memory and takes a slot anew, so two processes never write one slot.

The store calls :meth:`Writer.fold` for each window whose raw insert won, in the transaction of that
insert, then :meth:`Writer.flush`: a window repeated (a QoS 1 redelivery, or the same message at
another collector) never reaches the totals twice.

Totals rows are cumulative per minute (:mod:`edgekit.monitor.store.totals`). A window for a minute
before the newest row of its series (late, out of order) is added to every later row as well.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from device_agent.contract.protocol import TelemetryMessage
from edgekit.monitor.store.db import Db
from edgekit.monitor.store.totals import Layout, Totals

__all__ = ["LEASE_S", "LeaseLost", "Writer", "hour_of", "minute_of"]

#: a writer slot not renewed for this long may be taken by another process
LEASE_S = 60.0
#: series not written for this long leave the memory (their newest row is read again when needed)
IDLE_S = 7200.0
UNKNOWN = "?"


class LeaseLost(RuntimeError):
    """Another process took this writer's slot (it stalled past the lease): roll back, forget, claim again."""


def minute_of(ts: float) -> int:
    return int(ts // 60) * 60


def hour_of(ts: float) -> int:
    return int(ts // 3600) * 3600


@dataclass
class _Series:
    id: int
    layout: Layout
    minute: int | None  # of the newest row; None before the first
    head: Totals  # the newest row (zeros before the first)
    lo: float = 0.0
    hi: float = 0.0
    first_start: float | None = None
    used: float = field(default_factory=time.monotonic)


@dataclass
class _Rollup:
    ints: list[int]  # windows, samples, requests, errors, lat_count, labelled, correct
    lat_sum: float = 0.0
    lat_max: float | None = None
    p95_max: float | None = None
    totals: Totals | None = None  # groups only


_TOTALS_UPSERT = ("INSERT INTO totals (series, minute, windows, samples, lo, hi, data) VALUES (?,?,?,?,?,?,?) "
                  "ON CONFLICT (series, minute) DO UPDATE SET windows = excluded.windows, samples = excluded.samples, "
                  "lo = excluded.lo, hi = excluded.hi, data = excluded.data")
# column types of the upserts (PostgreSQL takes a batch's rows as one array per column; keys are distinct within a batch)
_TOTALS_TYPES = ("int8", "int8", "int8", "int8", "float8", "float8", "bytea")
_ROLLUP_TYPES = ("int8",) * 9 + ("float8",) * 3 + ("text", "bytea")
_ROLLUP_UPSERT = ("INSERT INTO rollups (key, hour, windows, samples, requests, errors, lat_count, "
                  "labelled, correct, lat_sum, lat_max, p95_max, layout, data) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?) "
                  "ON CONFLICT (key, hour) DO UPDATE SET windows = excluded.windows, "
                  "samples = excluded.samples, requests = excluded.requests, errors = excluded.errors, lat_count = excluded.lat_count, "
                  "labelled = excluded.labelled, correct = excluded.correct, lat_sum = excluded.lat_sum, lat_max = excluded.lat_max, "
                  "p95_max = excluded.p95_max, layout = excluded.layout, data = excluded.data")
_ROLLUP_COLUMNS = "windows, samples, requests, errors, lat_count, labelled, correct, lat_sum, lat_max, p95_max, layout, data"


class Writer:
    """One process's share of the running totals and roll-ups (see the module docs). Not thread-safe: the store serialises it.

    Args:
        holder: who holds the slot (a collector id plus a random part).
        clock: wall time, for leases.
    """

    def __init__(self, holder: str, *, clock: Callable[[], float] = time.time) -> None:
        self.holder = holder
        self.clock = clock
        self.slot: int | None = None
        self._claimed_hour = 0  # roll-up rows of later hours can only be this writer's own...
        self._evicted_before = 0  # ...unless they left the memory since
        self._series: dict[tuple[str, str, str], _Series] = {}
        self._rollups: dict[tuple[str, str, str, str, int], _Rollup] = {}
        self._rows: dict[tuple[int, int], _Series | tuple[Any, ...]] = {}  # totals rows to write: the head, or a snapshot
        self._dirty_series: set[tuple[str, str, str]] = set()
        self._dirty_rollups: set[tuple[str, str, str, str, int]] = set()
        self._keys: dict[tuple[str, str, str, str], int] = {}  # (scope, name, model, version) -> its rollup_keys id
        self._folds = 0

    # --- the lease ----------------------------------------------------------------------------------

    def claim(self, db: Db) -> int:
        """Take the lowest slot that is free (never held, or its lease expired); returns it."""
        now = self.clock()
        for slot, holder, beat in db.rows("SELECT slot, holder, heartbeat FROM writers ORDER BY slot"):
            if (holder == self.holder or beat < now - LEASE_S) and db.run(
                    "UPDATE writers SET holder = ?, heartbeat = ? WHERE slot = ? AND holder = ? AND heartbeat = ?",
                    (self.holder, now, slot, holder, beat)) == 1:
                return self._claimed(int(slot), now)
        top = db.one("SELECT MAX(slot) FROM writers")
        slot = 0 if top is None or top[0] is None else int(top[0]) + 1
        if db.run("INSERT INTO writers (slot, holder, heartbeat) VALUES (?,?,?) ON CONFLICT (slot) DO NOTHING",
                  (slot, self.holder, now)) != 1:
            raise LeaseLost(f"writer slot {slot} was taken while claiming it")
        return self._claimed(slot, now)

    def _claimed(self, slot: int, now: float) -> int:
        self.reset()
        self.slot = slot
        self._claimed_hour = hour_of(now)
        return slot

    def renew(self, db: Db) -> None:
        """Renew the lease in ``db``'s transaction; :class:`LeaseLost` when another process took the slot."""
        if self.slot is None or db.run("UPDATE writers SET heartbeat = ? WHERE slot = ? AND holder = ?",
                                       (self.clock(), self.slot, self.holder)) != 1:
            raise LeaseLost(f"writer slot {self.slot} is no longer held by {self.holder}")

    def reset(self) -> None:
        """Forget everything held in memory (after a failed transaction, or a lost lease): it is read again."""
        self.slot = None
        self._series.clear()
        self._rollups.clear()
        self._rows.clear()
        self._dirty_series.clear()
        self._dirty_rollups.clear()
        self._keys.clear()  # a key inserted by a transaction that rolled back is gone

    # --- folding windows in --------------------------------------------------------------------------

    def fold(self, db: Db, msg: TelemetryMessage, group: str) -> None:
        """Add a window stored for the first time (and its late labels) to its series and roll-ups."""
        model = (msg.model or {}).get("name") or UNKNOWN
        version = (msg.model or {}).get("version") or UNKNOWN
        start, end = float(msg.window.get("start", msg.ts)), float(msg.window.get("end", msg.ts))
        s = self._get(db, (msg.device, model, version), msg)
        delta = Totals.of_window(msg, s.layout)
        self._add(db, s, minute_of(end), delta, start, end)
        if s.first_start is None or start < s.first_start:
            s.first_start = start
            self._dirty_series.add((msg.device, model, version))
        hour = hour_of(end)
        for scope, name in (("device", msg.device), ("group", group)):
            r = self._rollup(db, (scope, name, model, version, hour))
            _add_scalars(r, msg, delta)
            if scope == "group":
                r.totals = delta.copy() if r.totals is None else r.totals.add(delta)
        for fv, c in (msg.feedback.accuracy.items() if msg.feedback else ()):
            labelled, correct = int(c.get("labelled", 0)), int(c.get("correct", 0))
            fs = self._get(db, (msg.device, model, fv), None)
            acc = Totals(fs.layout)
            acc.add_accuracy(labelled, correct)
            self._add(db, fs, minute_of(end), acc, start, end)
            for scope, name in (("device", msg.device), ("group", group)):
                r = self._rollup(db, (scope, name, model, fv, hour))
                r.ints[5] += labelled
                r.ints[6] += correct

    def _get(self, db: Db, key: tuple[str, str, str], msg: TelemetryMessage | None) -> _Series:
        s = self._series.get(key)
        if s is None:
            s = self._series[key] = self._load(db, key)
        s.used = time.monotonic()
        if msg is not None:
            grown = s.layout.extended(msg)
            if grown is not s.layout:
                s.layout = grown
                s.head = Totals(grown).add(s.head)
                self._dirty_series.add(key)
        return s

    def _load(self, db: Db, key: tuple[str, str, str]) -> _Series:
        row = db.one("SELECT id, layout, first_start FROM series WHERE device = ? AND model = ? AND version = ? AND writer = ?",
                     (*key, self.slot))
        if row is None:
            row = db.one("INSERT INTO series (device, model, version, writer, layout) VALUES (?,?,?,?,?) RETURNING id, layout, first_start",
                         (*key, self.slot, "[]"))
            assert row is not None  # RETURNING of an INSERT that succeeded
        sid, layout = int(row[0]), Layout.from_json(row[1])
        head = db.one("SELECT minute, lo, hi, data FROM totals WHERE series = ? ORDER BY minute DESC LIMIT 1", (sid,))
        if head is None:
            return _Series(sid, layout, None, Totals(layout), first_start=row[2])
        return _Series(sid, layout, int(head[0]), Totals.decode(head[3], layout), float(head[1]), float(head[2]), row[2])

    def _add(self, db: Db, s: _Series, minute: int, delta: Totals, lo: float, hi: float) -> None:
        if s.minute is None or minute > s.minute:
            if s.minute is not None and self._rows.get((s.id, s.minute)) is s:
                self._rows[(s.id, s.minute)] = self._snapshot(s)  # its row is final: the head moves on
            s.head.add(delta)
            s.minute, s.lo, s.hi = minute, lo, hi
        elif minute == s.minute:
            s.head.add(delta)
            s.lo, s.hi = min(s.lo, lo), max(s.hi, hi)
        else:
            self._late(db, s, minute, delta, lo, hi)
            return
        self._rows[(s.id, minute)] = s

    def _snapshot(self, s: _Series) -> tuple[Any, ...]:
        return (s.id, s.minute, s.head.windows, s.head.samples, s.lo, s.hi, s.head.encode())

    def _late(self, db: Db, s: _Series, minute: int, delta: Totals, lo: float, hi: float) -> None:
        """A window older than the series' newest row: it joins its minute's row and every later one."""
        self._write_rows(db, [k for k in self._rows if k[0] == s.id])
        rows = db.rows("SELECT minute, lo, hi, data FROM totals WHERE series = ? AND minute >= ? ORDER BY minute", (s.id, minute))
        fixed = []
        if not rows or int(rows[0][0]) != minute:
            prev = db.one("SELECT data FROM totals WHERE series = ? AND minute < ? ORDER BY minute DESC LIMIT 1", (s.id, minute))
            base = Totals(s.layout) if prev is None else Totals.decode(prev[0], s.layout)
            rows.insert(0, (minute, lo, hi, base.encode()))
        for m, rlo, rhi, data in rows:
            t = Totals.decode(data, s.layout).add(delta)
            if int(m) == minute:
                rlo, rhi = min(float(rlo), lo), max(float(rhi), hi)
            fixed.append((s.id, int(m), t.windows, t.samples, rlo, rhi, t.encode()))
        db.many(_TOTALS_UPSERT, fixed)
        s.head.add(delta)

    def _rollup(self, db: Db, key: tuple[str, str, str, str, int]) -> _Rollup:
        r = self._rollups.get(key)
        if r is None:
            row = None
            if key[4] <= self._claimed_hour or key[4] < self._evicted_before:  # the row may be in the database
                row = db.one(f"SELECT {_ROLLUP_COLUMNS} FROM rollups WHERE key = ? AND hour = ?", (self._key(db, key[:4]), key[4]))
            r = self._rollups[key] = _Rollup([0] * 7) if row is None else _Rollup(
                [int(x) for x in row[:7]], float(row[7]), row[8], row[9],
                None if row[11] is None else Totals.decode(row[11], Layout.from_json(row[10])))
        self._dirty_rollups.add(key)
        return r

    def _key(self, db: Db, subject: tuple[str, str, str, str]) -> int:
        """The ``rollup_keys`` id of (scope, name, model, version) under this writer's slot, added when new."""
        known = self._keys.get(subject)
        if known is None:
            args = (*subject, self.slot)
            row = db.one("SELECT id FROM rollup_keys WHERE scope = ? AND name = ? AND model = ? AND version = ? AND writer = ?", args) \
                or db.one("INSERT INTO rollup_keys (scope, name, model, version, writer) VALUES (?,?,?,?,?) RETURNING id", args)
            assert row is not None  # RETURNING of an INSERT that succeeded (the slot is this writer's alone)
            known = self._keys[subject] = int(row[0])
        return known

    # --- writing ------------------------------------------------------------------------------------

    def flush(self, db: Db) -> None:
        """Write what this batch changed, and renew the lease, in ``db``'s transaction."""
        db.many("UPDATE series SET layout = ?, first_start = ? WHERE id = ?",
                [(s.layout.to_json(), s.first_start, s.id) for s in (self._series[k] for k in self._dirty_series)])
        self._write_rows(db, list(self._rows))
        rows = []
        for key in self._dirty_rollups:
            r = self._rollups[key]
            t = r.totals
            rows.append((self._key(db, key[:4]), key[4], *r.ints, r.lat_sum, r.lat_max, r.p95_max,
                         None if t is None else t.layout.to_json(), None if t is None else t.encode()))
        db.many(_ROLLUP_UPSERT, rows, arrays=_ROLLUP_TYPES)
        self.renew(db)
        self._dirty_series.clear()
        self._dirty_rollups.clear()
        self._folds += 1
        if self._folds % 1000 == 0:
            self._evict()

    def _write_rows(self, db: Db, keys: list[tuple[int, int]]) -> None:
        rows = []
        for k in keys:
            v = self._rows.pop(k)
            rows.append(self._snapshot(v) if isinstance(v, _Series) else v)
        db.many(_TOTALS_UPSERT, rows, arrays=_TOTALS_TYPES)

    def _evict(self) -> None:
        idle = time.monotonic() - IDLE_S
        for key in [k for k, s in self._series.items() if s.used < idle]:
            del self._series[key]
        self._evicted_before = hour_of(self.clock()) - 3600
        for old in [k for k in self._rollups if k[4] < self._evicted_before]:
            del self._rollups[old]


def _add_scalars(r: _Rollup, msg: TelemetryMessage, delta: Totals) -> None:
    for i in range(5):
        r.ints[i] += int(delta.ints[i])
    r.lat_sum += float(delta.floats[0])
    lat = msg.latency_ms
    if lat is not None and lat.count:
        r.lat_max = lat.max if r.lat_max is None else max(r.lat_max, lat.max)
        r.p95_max = lat.p95 if r.p95_max is None else max(r.p95_max, lat.p95)
