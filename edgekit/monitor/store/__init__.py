"""Where the fleet monitor keeps history, references, verdicts and alerts.

- :mod:`edgekit.monitor.store.base`     the records and the :class:`FleetStore` contract (three protocols)
- :mod:`edgekit.monitor.store.devices`  the devices page (``fleet status``): its records, query and the table as read
- :mod:`edgekit.monitor.store.census`   the fleet counted (devices per version, verdicts of a scope, alerts): /metrics, the page
- :mod:`edgekit.monitor.store.totals`   running totals: what windows add up to, in a form that also subtracts
- :mod:`edgekit.monitor.store.schema`   the tables, as numbered migrations per backend
- :mod:`edgekit.monitor.store.sql`      what both SQL backends share (writes; reads in ``reads``, totals in ``writer``)
- :mod:`edgekit.monitor.store.sqlite`   :class:`SqliteStore`, the embedded backend (one file, WAL)
- :mod:`edgekit.monitor.store.postgres` :class:`PostgresStore`, past one machine (several collectors, hour partitions)
"""

from __future__ import annotations

from pathlib import Path

from edgekit.monitor.store.base import (
    ACCURACY,
    DEVICE_FIELDS,
    UNKNOWN,
    Alert,
    DevicePage,
    DeviceQuery,
    DeviceRecord,
    DeviceRow,
    DeviceTable,
    DriftState,
    FleetHistory,
    FleetStore,
    HourRow,
    JobRecord,
    Reference,
    Span,
    TelemetrySink,
    VerdictStore,
)
from edgekit.monitor.store.census import AlertCount, DeviceCount, FleetCensus, Verdict
from edgekit.monitor.store.sqlite import SqliteStore
from edgekit.monitor.store.totals import Layout, Totals

__all__ = [
    "ACCURACY",
    "DEVICE_FIELDS",
    "UNKNOWN",
    "Alert",
    "AlertCount",
    "DeviceCount",
    "FleetCensus",
    "Verdict",
    "DeviceQuery",
    "DevicePage",
    "DeviceRecord",
    "DeviceRow",
    "DeviceTable",
    "DriftState",
    "FleetHistory",
    "FleetStore",
    "HourRow",
    "JobRecord",
    "Layout",
    "Reference",
    "Span",
    "SqliteStore",
    "TelemetrySink",
    "Totals",
    "VerdictStore",
    "is_url",
    "open_store",
]

_SCHEMES = ("postgresql://", "postgres://")


def is_url(db: str | Path) -> bool:
    """Whether ``--db`` names a PostgreSQL database (a ``postgresql://`` URL) rather than a SQLite file."""
    return str(db).startswith(_SCHEMES)


def open_store(db: str | Path, *, holder: str | None = None) -> FleetStore:
    """The fleet store at ``db``: a ``postgresql://user@host:5432/name`` URL, or a SQLite file (created if missing).

    Args:
        holder: this process's name in the writer leases (a collector passes its id).
    """
    if is_url(db):
        from edgekit.monitor.store.postgres import PostgresStore

        return PostgresStore(str(db), holder=holder)
    return SqliteStore(db, holder=holder)
