"""Fleet monitoring: input drift and model accuracy from the telemetry devices send.

::

    drift.py      PSI, KS, NaN and out-of-range shares from binned counts; thresholds; verdicts
    store.py      telemetry history, references, verdicts and alerts behind one storage seam (SQLite)
    monitor.py    the judgement: messages in, verdicts and alerts out (no I/O of its own)
    collector.py  ``fleet watch``: MQTT shared subscription → Monitor → alerts on MQTT
    query.py      ``fleet drift --broker``: ask every collector, merge their counts
    alerts.py     the alert message published on ``<prefix>/fleet/alerts/<scope>/<name>``

Nothing here loads onnx, torch or tensorflow.
"""

from edgekit.monitor.collector import Collector, parse_broker_url
from edgekit.monitor.drift import (
    DriftReport,
    DriftThresholds,
    FeatureDrift,
    FeatureSummary,
    Level,
    WindowSet,
    evaluate,
    feature_drift,
    ks_statistic,
    psi,
)
from edgekit.monitor.monitor import Monitor, MonitorConfig, accuracy_report, drift_reports, drift_summary
from edgekit.monitor.store import FleetStore, Reference, SqliteStore, open_store

__all__ = [
    "Collector",
    "DriftReport",
    "DriftThresholds",
    "FeatureDrift",
    "FeatureSummary",
    "FleetStore",
    "Level",
    "Monitor",
    "MonitorConfig",
    "Reference",
    "SqliteStore",
    "WindowSet",
    "accuracy_report",
    "drift_reports",
    "drift_summary",
    "evaluate",
    "feature_drift",
    "ks_statistic",
    "open_store",
    "parse_broker_url",
    "psi",
]
