"""Fleet monitoring: input drift and model accuracy from the telemetry devices send.

Ingest is separate from evaluation: what arrives is filed first, and only new windows are judged.

::

    stats.py      PSI, KS, χ² and normal quantiles, Wilson bounds (counts only; no scipy)
    windows.py    telemetry windows merged per feature: additive counts and moments
    drift.py      thresholds, per-feature and per-report drift verdicts
    accuracy.py   late labels against the manifest's accuracy
    config.py     MonitorConfig: thresholds, lookback, accuracy bounds, retention
    store/        the FleetStore contract (base.py) and its SQLite backend (sqlite.py)
    ingest.py     messages decoded and filed: windows, device states, references from deploy commands
    evaluation.py what a new window (or the group timer) means for drift and accuracy
    verdicts.py   verdict state per feature; the alerts its changes raise
    reports.py    ``fleet drift`` reports and the ``fleet status`` drift column, from the store
    monitor.py    Monitor: ingest + evaluation, no I/O of its own
    alerts.py     the alert message published on ``<prefix>/fleet/alerts/<scope>/<name>``
    query.py      ``fleet drift --broker``: ask every collector, merge their counts
    status.py     the ``fleet status`` drift column from the broker's retained summaries
    collector.py  ``fleet watch``: MQTT shared subscription → Monitor → alerts on MQTT

MQTT goes through the fleet side's one adapter, :mod:`edgekit.fleet.mqtt`. Nothing here loads
onnx, torch or tensorflow.
"""

from edgekit.monitor.accuracy import AccuracyReport, accuracy_report
from edgekit.monitor.collector import Collector
from edgekit.monitor.config import MonitorConfig
from edgekit.monitor.drift import DriftReport, DriftThresholds, FeatureDrift, Level, evaluate, feature_drift
from edgekit.monitor.monitor import Monitor
from edgekit.monitor.reports import drift_reports, drift_summary
from edgekit.monitor.stats import ks_statistic, psi
from edgekit.monitor.store import ACCURACY, FleetStore, Reference, SqliteStore, open_store
from edgekit.monitor.windows import FeatureSummary, WindowSet

__all__ = [
    "ACCURACY",
    "AccuracyReport",
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
    "psi",
]
