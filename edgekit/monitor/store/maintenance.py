"""Retention and migrations, for both SQL backends.

Retention (:func:`prune_aggregates`, run by any collector every few minutes; every statement is
idempotent, so collectors sharing a database may run it concurrently):

- running totals older than ``minutes_before`` keep one row an hour (the last of each hour; the
  totals are cumulative, so dropping a row loses no window, only resolution);
- running totals older than ``raw_before`` keep one row per series (the newest below the cutoff,
  recorded as the series' ``floor``: a span that starts earlier starts there); a series whose newest
  row is older than ``before`` goes;
- roll-ups and alerts older than ``before`` go.

Raw windows are the backend's: SQLite deletes them, PostgreSQL drops whole hour partitions. Either
first records, per device, the highest sequence number it forgets (``devices.pruned_seq``), so a
late repeat of a forgotten window is not counted again.

Migrations (:func:`migrate`): the versions of :mod:`edgekit.monitor.store.schema` above the one
recorded in ``schema_version``, each in its own transaction with its row in that table.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager

from edgekit.errors import InputError
from edgekit.monitor.store.db import Db
from edgekit.monitor.store.schema import LATEST
from edgekit.monitor.store.writer import minute_of

__all__ = ["migrate", "prune_aggregates", "record_pruned"]


def migrate(transaction: Callable[[], AbstractContextManager[Db]], steps: dict[int, tuple[str, list[str]]], *, where: str,
            lock: str = "", legacy: bool = False) -> list[int]:
    """Apply the versions of ``steps`` not applied yet; returns them.

    Args:
        transaction: opens one transaction.
        steps: version -> (description, statements).
        where: the database, for messages.
        lock: a statement that serialises migrating processes (PostgreSQL: an advisory lock).
        legacy: the database predates ``schema_version`` (its tables are version 1).
    """
    with transaction() as db:
        if lock:
            db.rows(lock)  # CREATE TABLE IF NOT EXISTS is not safe against a concurrent one
        db.run("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied DOUBLE PRECISION NOT NULL, description TEXT NOT NULL)")
        row = db.one("SELECT COUNT(*) FROM schema_version")
        if legacy and row is not None and not row[0]:
            db.run("INSERT INTO schema_version (version, applied, description) VALUES (?,?,?)", (1, time.time(), steps[1][0]))
    applied: list[int] = []
    for version in sorted(steps):
        description, statements = steps[version]
        with transaction() as db:
            if lock:
                db.rows(lock)
            row = db.one("SELECT MAX(version) FROM schema_version")
            current = int(row[0]) if row and row[0] is not None else 0
            if current > LATEST:
                raise InputError(f"the fleet database {where} has schema version {current}; this edgekit knows versions up to {LATEST}: "
                                 "upgrade edgekit")
            if version <= current:
                continue
            for statement in statements:
                db.run(statement)
            db.run("INSERT INTO schema_version (version, applied, description) VALUES (?,?,?)", (version, time.time(), description))
            applied.append(version)
    return applied


def record_pruned(db: Db, source: str, before: float) -> None:
    """Remember per device the highest sequence number of the raw windows in ``source`` that ended before ``before``."""
    db.run(f"UPDATE devices SET pruned_seq = p.seq FROM (SELECT device, MAX(seq) AS seq FROM {source} WHERE window_end < ? "
           "GROUP BY device) AS p WHERE devices.device = p.device AND (devices.pruned_seq IS NULL OR devices.pruned_seq < p.seq)",
           (before,))


def prune_aggregates(transaction: Callable[[], AbstractContextManager[Db]], *, before: float, raw_before: float,
                     minutes_before: float) -> None:
    """Thin and drop running totals, drop roll-ups and alerts (see the module docs)."""
    fine, coarse, gone = minute_of(minutes_before), minute_of(raw_before), minute_of(before)
    with transaction() as db:
        db.run("DELETE FROM totals WHERE minute < ? AND minute <> (SELECT MAX(t2.minute) FROM totals t2 WHERE t2.series = totals.series "
               "AND t2.minute >= totals.minute - totals.minute % 3600 AND t2.minute < totals.minute - totals.minute % 3600 + 3600)", (fine,))
    with transaction() as db:
        db.run("DELETE FROM totals WHERE minute < ? AND minute < (SELECT MAX(t2.minute) FROM totals t2 WHERE t2.series = totals.series "
               "AND t2.minute < ?)", (coarse, coarse))
        # what is left below the cut is the base older spans start from (they are cut short there)
        db.run("UPDATE series SET floor = (SELECT MIN(t.minute) FROM totals t WHERE t.series = series.id) "
               "WHERE (SELECT MIN(t.minute) FROM totals t WHERE t.series = series.id) < ?", (coarse,))
    with transaction() as db:
        db.run("DELETE FROM totals WHERE series IN (SELECT series FROM totals GROUP BY series HAVING MAX(minute) < ?)", (gone,))
        db.run("DELETE FROM series WHERE NOT EXISTS (SELECT 1 FROM totals t WHERE t.series = series.id)")
        db.run("DELETE FROM rollups WHERE hour < ?", (int(before // 3600) * 3600,))
        db.run("DELETE FROM alerts WHERE ts < ?", (before,))
