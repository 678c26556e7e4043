"""The fleet store's contract: what the monitor keeps, as records and as three small protocols.

:class:`FleetStore` is everything the collector, ``fleet drift`` and ``fleet status`` need from
storage, split by who uses it:

- :class:`TelemetrySink` — the ingest path (:mod:`edgekit.monitor.ingest`): device states, job
  states, rollouts, telemetry windows (deduplicated on ``(device, seq)``; the running totals of
  :mod:`edgekit.monitor.store.totals` grow with every window stored for the first time),
  references, retention;
- :class:`FleetHistory` — what evaluation, queries and ``fleet status`` read: the totals of any
  span of time per device and model version (:class:`Span`), the devices page, hourly history,
  jobs and rollouts, references — and, for inspection, the raw windows;
- :class:`VerdictStore` — the judged state per feature, the alerts raised, each device's verdict;
- :class:`~edgekit.monitor.store.census.FleetCensus` — the fleet counted, for ``/metrics`` and the fleet page.

Two backends implement it: :class:`~edgekit.monitor.store.sqlite.SqliteStore` (embedded, one
file) and :class:`~edgekit.monitor.store.postgres.PostgresStore` (several collectors on several
hosts); the monitor does not know which one it runs on. Implementations are safe to call from
several threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from device_agent.contract.categories import category_profiles
from device_agent.contract.manifest import FeatureProfile, Manifest
from device_agent.contract.protocol import JobUpdate, StateMessage, TelemetryMessage
from edgekit.monitor.store.census import FleetCensus
from edgekit.monitor.store.devices import DEVICE_FIELDS, DevicePage, DeviceQuery, DeviceRow, DeviceTable
from edgekit.monitor.store.totals import Totals

__all__ = [
    "ACCURACY",
    "DEVICE_FIELDS",
    "UNKNOWN",
    "Alert",
    "DeviceQuery",
    "DeviceRecord",
    "DeviceRow",
    "DevicePage",
    "DeviceTable",
    "DriftState",
    "HourRow",
    "JobRecord",
    "Span",
    "FleetHistory",
    "FleetStore",
    "Reference",
    "TelemetrySink",
    "VerdictStore",
]

#: the model or version a window is filed under when the device did not say (agents without a manifest)
UNKNOWN = "?"
#: the drift-state row that holds an accuracy verdict (not a feature name: features never start with "(")
ACCURACY = "(accuracy)"


@dataclass(frozen=True)
class Reference:
    """What a model version is judged against: its drift profile and its measured accuracy.

    ``accuracy`` maps artifact file (and "source") to top-1 accuracy as a fraction (0..1).
    """

    model: str
    version: str
    features: tuple[FeatureProfile, ...]
    accuracy: dict[str, float] = field(default_factory=dict)
    source: str = ""

    @classmethod
    def from_manifest(cls, manifest: Manifest, source: str = "") -> Reference:
        acc: dict[str, float] = {}
        for key, m in manifest.metrics.items():
            if isinstance(m, dict) and isinstance(m.get("accuracy"), (int, float)):
                acc[key] = float(m["accuracy"]) / 100.0  # the manifest records percent
        # a table's categorical columns are judged as features binned on their categories (device_agent.contract.categories)
        return cls(manifest.name, manifest.version, manifest.features + category_profiles(manifest), acc, source)

    def baseline_accuracy(self, artifact: str | None = None) -> float | None:
        """The accuracy to hold a device against: its artifact's if known, else the lowest artifact's, else the source's."""
        if artifact and artifact in self.accuracy:
            return self.accuracy[artifact]
        arts = [v for k, v in self.accuracy.items() if k != "source"]
        if arts:
            return min(arts)
        return self.accuracy.get("source")


@dataclass(frozen=True)
class DeviceRecord:
    """The last known state of one device (``status`` "unknown" until its retained state arrived).

    ``runtime*``: the runtime check of the device's newest state message or telemetry window
    (:class:`~device_agent.contract.runtimes.RuntimeCheck`): which runtime serves the model, the version
    the model card validated it with, the check's status and why.
    """

    device: str
    group: str
    status: str
    model: str | None
    version: str | None
    artifact: str | None
    last_seen: float
    agent_version: str | None
    runtime: str | None = None  # "onnxruntime 1.27.0": the runtime serving the model
    runtime_validated: str | None = None
    runtime_status: str | None = None
    runtime_detail: str | None = None


@dataclass(frozen=True)
class DriftState:
    """The last verdict on one feature (or :data:`ACCURACY`) and since when it has been on this side of warn."""

    feature: str
    level: str
    since: float
    updated: float
    psi: float | None


@dataclass(frozen=True)
class Span:
    """What one device sent on one model version over a span of time, summed (:class:`Totals`).

    ``start``/``end`` bound the windows summed (minute resolution); ``group`` is the device's group now.
    """

    device: str
    group: str
    model: str
    version: str
    totals: Totals
    start: float | None
    end: float | None


@dataclass(frozen=True)
class HourRow:
    """One hour of a device's or group's roll-up (every collector's share summed); ``totals`` for groups only."""

    scope: str
    name: str
    model: str
    version: str
    hour: float
    windows: int
    samples: int
    requests: int
    errors: int
    latency_mean_ms: float | None
    latency_max_ms: float | None
    p95_max_ms: float | None
    labelled: int
    correct: int
    totals: Totals | None = None


@dataclass(frozen=True)
class JobRecord:
    """The latest state one device reported for one job."""

    device: str
    job: str
    state: str
    reason: str
    detail: str
    ota_state: str
    version: str | None
    ts: float


@dataclass(frozen=True)
class Alert:
    """One alert; ``payload`` is the message published on the fleet alert topic."""

    id: int
    ts: float
    kind: str  # "drift" | "accuracy" | "resolved"
    scope: str
    name: str
    model: str
    version: str
    level: str
    payload: dict[str, Any]

    @classmethod
    def from_payload(cls, id: int, ts: float, payload: dict[str, Any]) -> Alert:
        """The record of an alert message (:mod:`edgekit.monitor.alerts`): its envelope names kind, subject and level."""
        model = payload.get("model") or {}
        return cls(id, ts, str(payload["kind"]), str(payload["scope"]), str(payload["name"]), str(model.get("name", UNKNOWN)),
                   str(model.get("version", UNKNOWN)), str(payload["level"]), payload)


class TelemetrySink(Protocol):
    """The ingest path: what arrives from the broker (and the operator's references)."""

    def record_state(self, msg: StateMessage) -> None:
        """Keep the device's group, status and model (a missing model keeps the known one; an older state changes nothing)."""

    def record_states(self, msgs: Sequence[StateMessage]) -> None:
        """:meth:`record_state` for many, in one transaction."""

    def record_jobs(self, updates: Sequence[JobUpdate]) -> None:
        """Keep the latest state per device and job (and each device's latest job), in one transaction."""

    def record_rollout(self, doc: dict[str, Any]) -> None:
        """Keep (or replace) a rollout as the operator published it (``doc["job"]`` names it)."""

    def add_telemetry(self, msg: TelemetryMessage, payload: bytes, *, collector: str = "") -> bool:
        """Store one window as received, tagged with the collector; False when ``(device, seq)`` was already stored."""

    def add_batch(self, items: Sequence[tuple[TelemetryMessage, bytes]], *, collector: str = "") -> list[bool]:
        """Store windows in one transaction; per window, True when it was stored for the first time.

        Only those windows are added to the running totals and roll-ups (in the same transaction),
        so a window delivered twice — to this collector or to another on the same database — counts once.
        """

    def add_reference(self, ref: Reference) -> None:
        """Keep (or replace) the reference of ``ref.model`` ``ref.version``."""

    def prune(self, before: float, *, raw_before: float | None = None, minutes_before: float | None = None) -> int:
        """Forget what is older than the retention; returns the raw windows removed.

        ``before``: roll-ups and alerts; ``raw_before`` (default ``before``): raw windows, and running
        totals beyond hourly resolution; ``minutes_before``: running totals thinned to one row an hour.
        """

    def renew(self) -> None:
        """Renew this process's writer lease (an idle collector keeps its slot; see :mod:`edgekit.monitor.store.writer`)."""


class FleetHistory(Protocol):
    """What evaluation, ``fleet drift``, ``fleet status`` and queries read."""

    @property
    def store_id(self) -> str:
        """This database's id: collectors that share one answer a query once."""

    def spans(self, *, device: str | None = None, group: str | None = None, since: float,
              until: float | None = None) -> list[Span]:
        """Per device and model version (of ``device``, of the devices now in ``group``, or all), what was sent since
        ``since`` (until ``until``, default: everything); only spans with windows or labels. Minute resolution."""

    def recent_span(self, device: str, model: str, version: str, *, samples: int, since: float) -> Span | None:
        """The newest minutes of one device and model version summed, back until ``samples`` rows are covered
        (or ``since``); None when nothing was sent since ``since``."""

    def version_history(self, device: str) -> list[tuple[str, str, float]]:
        """(model, version, first window start) per model version the device reported, oldest first."""

    def devices(self, *, group: str | None = None) -> list[DeviceRecord]:
        """Every known device (of ``group``), by id."""

    def groups(self) -> list[str]:
        """Every group some device is in, sorted."""

    def device(self, device: str) -> DeviceRecord | None:
        """One device, or None when it never reported."""

    def device_page(self, query: DeviceQuery) -> DevicePage:
        """The devices page: every field ``fleet status`` shows, filtered and paged by ``query``."""

    def device_table(self, query: DeviceQuery) -> DeviceTable:
        """The same page as stored (values in field order, drift summaries as JSON text): for answers that forward it."""

    def hours(self, *, scope: str, name: str | None = None, since: float, until: float | None = None) -> list[HourRow]:
        """Hourly roll-ups of devices or groups (``scope``), of ``name`` or all, oldest first."""

    def jobs(self, *, job: str | None = None, device: str | None = None) -> list[JobRecord]:
        """The latest state per device and job, by device then time."""

    def rollouts(self, *, limit: int = 50) -> list[dict[str, Any]]:
        """Rollouts as the operator published them (waves, outcomes, abort reason), newest first."""

    def reference(self, model: str, version: str) -> Reference | None:
        """The reference of one model version, or None when none was registered."""

    def references(self) -> list[tuple[str, str]]:
        """(model, version) of every registered reference, sorted."""

    def telemetry(self, *, device: str | None = None, group: str | None = None, since: float | None = None,
                  model: str | None = None, version: str | None = None, collector: str | None = None) -> list[TelemetryMessage]:
        """Raw windows still kept (``raw_retention_s``) matching every filter, oldest first (``since``: the window's end).

        For inspection: evaluation, reports and queries read :meth:`spans`."""


class VerdictStore(Protocol):
    """The last verdict per (scope, name, model, version, feature), every alert raised, each device's verdict."""

    def drift_state(self, scope: str, name: str, model: str, version: str) -> dict[str, DriftState]:
        """The stored verdicts of one device or group on one model version, by feature."""

    def latest_drift(self, scope: str, name: str) -> tuple[str, str, dict[str, DriftState]] | None:
        """(model, version, verdicts) of the model version most recently judged for ``name``."""

    def set_drift_state(self, scope: str, name: str, model: str, version: str, states: Sequence[DriftState]) -> None:
        """Replace these features' verdicts, all or none."""

    def drift_states(self, keys: Sequence[tuple[str, str, str, str]]) -> dict[tuple[str, str, str, str], dict[str, DriftState]]:
        """:meth:`drift_state` of many (scope, name, model, version) at once (keys without verdicts are left out)."""

    def set_drift_states(self, items: Sequence[tuple[tuple[str, str, str, str], Sequence[DriftState]]]) -> None:
        """:meth:`set_drift_state` of many, in one transaction."""

    def set_device_drift(self, device: str, summary: dict[str, Any] | None) -> None:
        """Keep the device's verdict as ``fleet status`` shows it (:func:`edgekit.monitor.reports.drift_summary`)."""

    def set_device_drifts(self, items: Sequence[tuple[str, dict[str, Any] | None]]) -> None:
        """:meth:`set_device_drift` of many, in one transaction."""

    def add_alert(self, payload: dict[str, Any], *, ts: float | None = None) -> Alert:
        """Keep an alert message (:func:`edgekit.monitor.alerts.alert_payload`); ``ts`` defaults to now."""

    def alerts(self, *, scope: str | None = None, name: str | None = None, since: float | None = None, limit: int = 100) -> list[Alert]:
        """Alerts matching the filters, newest first."""


class FleetStore(TelemetrySink, FleetHistory, VerdictStore, FleetCensus, Protocol):
    """The whole storage seam of the fleet monitor."""

    def close(self) -> None:
        """Release the backend (the store is not used afterwards)."""
