"""The devices page: what ``fleet status`` shows of each device, the query that filters and pages it, and its forms.

:class:`DeviceRow` is one device's record; :class:`DeviceTable` the page as the store reads it (values in
field order, drift summaries still JSON text), which ``fleet status`` and a collector's status answer turn
into their rows directly (10,000 of them: a record each in between cost a fifth of the command);
:class:`DevicePage` the page as records (:meth:`~edgekit.monitor.store.base.FleetHistory.device_page`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

import orjson

__all__ = ["DEVICE_FIELDS", "DevicePage", "DeviceQuery", "DeviceRow", "DeviceTable"]


@dataclass(frozen=True)
class DeviceRow:
    """One row of the devices page: the device's state, its latest telemetry, latest job and drift verdict."""

    device: str
    group: str
    status: str
    model: str | None
    version: str | None
    artifact: str | None
    last_seen: float
    agent_version: str | None
    requests: int | None = None
    p95_ms: float | None = None
    outbox: int | None = None
    job: str | None = None
    job_state: str | None = None
    job_reason: str | None = None
    drift_level: str | None = None
    drift: dict[str, Any] | None = None  # the summary of edgekit.monitor.reports.drift_summary
    runtime: str | None = None  # as in DeviceRecord
    runtime_validated: str | None = None
    runtime_status: str | None = None  # a RuntimeStatus (match, drift, mismatch, refused, unknown); None: never reported
    runtime_detail: str | None = None

    @classmethod
    def of(cls, values: Iterable[Any]) -> DeviceRow:
        """A row from the values of its fields, in order (:data:`DEVICE_FIELDS`).

        The frozen ``__init__`` sets each of the twenty fields through ``object.__setattr__``: for the
        10,000 rows of a fleet's devices page that was a fifth of ``fleet status``; filling the instance's
        dictionary at once gives the same record.
        """
        row = object.__new__(cls)
        row.__dict__.update(zip(DEVICE_FIELDS, values, strict=True))
        return row


#: the fields of :class:`DeviceRow`, in order
DEVICE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(DeviceRow))


@dataclass(frozen=True)
class DeviceQuery:
    """Which devices a page shows (every filter optional), by id, from ``offset``, at most ``limit``."""

    group: str | None = None
    version: str | None = None
    online: bool | None = None
    drift: str | None = None  # a verdict level (ok, warn, alert, not_enough_data) or "none": never judged
    job_state: str | None = None
    agent_version: str | None = None
    runtime: str | None = None  # a runtime name ("onnxruntime"), or name and version ("onnxruntime 1.27" matches 1.27.x)
    runtime_status: str | None = None  # a RuntimeStatus, or "none": never reported
    offset: int = 0
    limit: int | None = None


@dataclass(frozen=True)
class DeviceTable:
    """A devices page as the store holds it: per device the values of :data:`DEVICE_FIELDS` in order (its drift
    summary, ``drift``, still the stored JSON text), and how many devices match in all. ``fleet status`` turns
    10,000 of them into its rows, and a collector into its answer, without a record of each in between."""

    values: list[tuple[Any, ...]]
    total: int
    offset: int = 0

    def records(self) -> list[dict[str, Any]]:
        """Each device's fields as a :class:`DeviceRow` holds them (its drift summary parsed), as plain dicts."""
        out = []
        for v in self.values:
            r = dict(zip(DEVICE_FIELDS, v, strict=True))
            if r["drift"]:
                r["drift"] = _summary(r["drift"])
            out.append(r)
        return out

    def page(self) -> DevicePage:
        """The same devices as records."""
        return DevicePage([DeviceRow.of(r.values()) for r in self.records()], self.total, self.offset)


def _summary(text: str) -> Any:
    """A stored drift summary: orjson reads it a few times faster than json; json also reads the NaN json.dumps may have written."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


@dataclass(frozen=True)
class DevicePage:
    """A page of devices and how many match the query in all."""

    rows: list[DeviceRow]
    total: int
    offset: int = 0
