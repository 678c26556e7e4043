"""Where the fleet monitor keeps history, references, verdicts and alerts.

- :mod:`edgekit.monitor.store.base`    the records and the :class:`FleetStore` contract (three protocols)
- :mod:`edgekit.monitor.store.sqlite`  :class:`SqliteStore`, the embedded backend (one file, WAL)
"""

from edgekit.monitor.store.base import (
    ACCURACY,
    UNKNOWN,
    Alert,
    DeviceRecord,
    DriftState,
    FleetHistory,
    FleetStore,
    Reference,
    TelemetrySink,
    VerdictStore,
)
from edgekit.monitor.store.sqlite import SqliteStore, open_store

__all__ = [
    "ACCURACY",
    "UNKNOWN",
    "Alert",
    "DeviceRecord",
    "DriftState",
    "FleetHistory",
    "FleetStore",
    "Reference",
    "SqliteStore",
    "TelemetrySink",
    "VerdictStore",
    "open_store",
]
