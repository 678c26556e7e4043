"""Fleet monitoring: input drift and model accuracy from the telemetry devices send.

Ingest is separate from evaluation: what arrives is filed first (and added to running totals as it
is stored), and only new windows are judged; nothing re-reads raw windows.

::

    stats.py      PSI, KS, χ² and normal quantiles, Wilson bounds (counts only; no scipy)
    windows.py    telemetry windows merged per feature: additive counts and moments
    drift.py      thresholds, per-feature and per-report drift verdicts
    bulk.py       the same verdicts on running totals, many spans at once (a group and its thousand devices)
    accuracy.py   late labels against the manifest's accuracy
    config.py     MonitorConfig: thresholds, lookback, accuracy bounds, retention
    store/        the FleetStore contract (base.py), running totals (totals.py), SQLite and PostgreSQL backends
    ingest.py     messages decoded and filed in batches: windows, device and job states, rollouts, references
    evaluation.py what a new window (or the group timer) means for drift and accuracy
    verdicts.py   verdict state per feature (read and written per batch); the alerts its changes raise
    reports.py    ``fleet drift`` reports, drift over time, the ``fleet status`` drift column, from the store
    monitor.py    Monitor: ingest + evaluation, no I/O of its own
    alerts.py     the alert message published on ``<prefix>/fleet/alerts/<scope>/<name>``
    asking.py     queries sent to one online collector per store, their answers gathered (light: no drift statistics)
    query.py      ``fleet drift --broker``: ask one collector per store, add the stores' totals up
    status.py     ``fleet status`` from a store: the devices page, status queries; the retained drift summaries
    workers.py    the collector's threads: ingest batches, judging, answering queries, retention
    collector.py  ``fleet watch``: MQTT shared subscription → Monitor → alerts on MQTT

MQTT goes through the fleet side's one adapter, :mod:`edgekit.fleet.mqtt`. Nothing here loads
onnx, torch or tensorflow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Names load on first use: ``fleet status`` reads a store and must not pay for the collector, pydantic's
# thresholds or paho (a third of a second of imports before its first row)
_LAZY = {
    "ACCURACY": "edgekit.monitor.store", "AccuracyReport": "edgekit.monitor.accuracy", "Collector": "edgekit.monitor.collector",
    "DriftReport": "edgekit.monitor.drift", "DriftThresholds": "edgekit.monitor.drift", "FeatureDrift": "edgekit.monitor.drift",
    "FeatureSummary": "edgekit.monitor.windows", "FleetStore": "edgekit.monitor.store", "Level": "edgekit.monitor.drift",
    "Monitor": "edgekit.monitor.monitor", "MonitorConfig": "edgekit.monitor.config", "Reference": "edgekit.monitor.store",
    "SqliteStore": "edgekit.monitor.store", "WindowSet": "edgekit.monitor.windows", "accuracy_report": "edgekit.monitor.accuracy",
    "drift_over_time": "edgekit.monitor.reports", "drift_reports": "edgekit.monitor.reports", "drift_summary": "edgekit.monitor.reports",
    "evaluate": "edgekit.monitor.drift", "feature_drift": "edgekit.monitor.drift", "ks_statistic": "edgekit.monitor.stats",
    "open_store": "edgekit.monitor.store", "psi": "edgekit.monitor.stats",
}

if TYPE_CHECKING:  # what type checkers see
    from edgekit.monitor.accuracy import AccuracyReport, accuracy_report
    from edgekit.monitor.collector import Collector
    from edgekit.monitor.config import MonitorConfig
    from edgekit.monitor.drift import DriftReport, DriftThresholds, FeatureDrift, Level, evaluate, feature_drift
    from edgekit.monitor.monitor import Monitor
    from edgekit.monitor.reports import drift_over_time, drift_reports, drift_summary
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
    "drift_over_time",
    "drift_reports",
    "drift_summary",
    "evaluate",
    "feature_drift",
    "ks_statistic",
    "open_store",
    "psi",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgekit.monitor' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
