"""The fleet store's contract: what the monitor keeps, as records and as three small protocols.

:class:`FleetStore` is everything the collector, ``fleet drift`` and ``fleet status`` need from
storage, split by who uses it:

- :class:`TelemetrySink` — the ingest path (:mod:`edgekit.monitor.ingest`): device states,
  telemetry windows (deduplicated on ``(device, seq)``), references, retention;
- :class:`FleetHistory` — what evaluation and queries read: windows, devices, references;
- :class:`VerdictStore` — the judged state per feature and the alerts raised.

:class:`edgekit.monitor.store.sqlite.SqliteStore` is the embedded backend. Another backend (a
server database for a fleet that outgrows one machine) implements the same protocols; keeping
aggregates incrementally belongs behind :class:`TelemetrySink` and :class:`FleetHistory`, so the
monitor does not change with it. Implementations must be safe to call from several threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from device_agent.contract.manifest import FeatureProfile, Manifest
from device_agent.contract.protocol import StateMessage, TelemetryMessage

__all__ = [
    "ACCURACY",
    "UNKNOWN",
    "Alert",
    "DeviceRecord",
    "DriftState",
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
        return cls(manifest.name, manifest.version, manifest.features, acc, source)

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
    """The last known state of one device (``status`` "unknown" until its retained state arrived)."""

    device: str
    group: str
    status: str
    model: str | None
    version: str | None
    artifact: str | None
    last_seen: float
    agent_version: str | None


@dataclass(frozen=True)
class DriftState:
    """The last verdict on one feature (or :data:`ACCURACY`) and since when it has been on this side of warn."""

    feature: str
    level: str
    since: float
    updated: float
    psi: float | None


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
        """Keep the device's group, status and model (a missing model keeps the known one)."""

    def add_telemetry(self, msg: TelemetryMessage, payload: bytes, *, collector: str = "") -> bool:
        """Store one window as received, tagged with the collector; False when ``(device, seq)`` was already stored."""

    def add_reference(self, ref: Reference) -> None:
        """Keep (or replace) the reference of ``ref.model`` ``ref.version``."""

    def prune(self, before: float) -> int:
        """Forget windows that ended, and alerts raised, before ``before``; returns the windows removed."""


class FleetHistory(Protocol):
    """What evaluation, ``fleet drift`` and drift queries read."""

    def telemetry(self, *, device: str | None = None, group: str | None = None, since: float | None = None,
                  model: str | None = None, version: str | None = None, collector: str | None = None) -> list[TelemetryMessage]:
        """Windows matching every given filter, oldest first (``since`` applies to the window's end)."""

    def recent(self, device: str, model: str, version: str, *, samples: int, since: float) -> list[TelemetryMessage]:
        """The newest windows of one device and model version, newest first, until ``samples`` rows are covered."""

    def version_history(self, device: str) -> list[tuple[str, str, float]]:
        """(model, version, first window start) per model version the device reported, oldest first."""

    def devices(self, *, group: str | None = None) -> list[DeviceRecord]:
        """Every known device (of ``group``), by id."""

    def device(self, device: str) -> DeviceRecord | None:
        """One device, or None when it never reported."""

    def reference(self, model: str, version: str) -> Reference | None:
        """The reference of one model version, or None when none was registered."""

    def references(self) -> list[tuple[str, str]]:
        """(model, version) of every registered reference, sorted."""


class VerdictStore(Protocol):
    """The last verdict per (scope, name, model, version, feature) and every alert raised."""

    def drift_state(self, scope: str, name: str, model: str, version: str) -> dict[str, DriftState]:
        """The stored verdicts of one device or group on one model version, by feature."""

    def latest_drift(self, scope: str, name: str) -> tuple[str, str, dict[str, DriftState]] | None:
        """(model, version, verdicts) of the model version most recently judged for ``name``."""

    def set_drift_state(self, scope: str, name: str, model: str, version: str, states: Sequence[DriftState]) -> None:
        """Replace these features' verdicts, all or none."""

    def add_alert(self, payload: dict[str, Any], *, ts: float | None = None) -> Alert:
        """Keep an alert message (:func:`edgekit.monitor.alerts.alert_payload`); ``ts`` defaults to now."""

    def alerts(self, *, scope: str | None = None, name: str | None = None, since: float | None = None, limit: int = 100) -> list[Alert]:
        """Alerts matching the filters, newest first."""


class FleetStore(TelemetrySink, FleetHistory, VerdictStore, Protocol):
    """The whole storage seam of the fleet monitor."""

    def close(self) -> None:
        """Release the backend (the store is not used afterwards)."""
