"""The fleet counted: what ``/metrics`` and the fleet page read in one query each, at any fleet size.

:class:`FleetCensus` is the part of the :class:`~edgekit.monitor.store.base.FleetStore` contract
that answers "how many" rather than "which": devices per group, model version, status, agent and
runtime (:meth:`FleetCensus.device_counts`), every stored verdict of one scope
(:meth:`FleetCensus.verdicts`: groups have a handful; devices are never exported per device) and
alerts counted by kind and level (:meth:`FleetCensus.alert_counts`). :class:`CensusReads` implements
it over SQL for both backends.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from edgekit.monitor.store.db import Db

__all__ = ["AlertCount", "CensusReads", "DeviceCount", "FleetCensus", "Verdict"]


@dataclass(frozen=True)
class DeviceCount:
    """How many devices share these fields (None: not reported yet)."""

    group: str
    model: str | None
    version: str | None
    status: str
    agent_version: str | None
    runtime: str | None
    runtime_status: str | None
    devices: int


@dataclass(frozen=True)
class Verdict:
    """One stored verdict: a feature (or the accuracy row) of one device or group on one model version."""

    scope: str
    name: str
    model: str
    version: str
    feature: str
    level: str
    psi: float | None
    since: float
    updated: float


@dataclass(frozen=True)
class AlertCount:
    """How many alerts of one kind, scope and level were raised since the time asked."""

    kind: str
    scope: str
    level: str
    alerts: int


class FleetCensus(Protocol):
    """The fleet counted (see the module docs)."""

    def device_counts(self) -> list[DeviceCount]:
        """Devices per (group, model, version, status, agent version, runtime, runtime status), sorted."""

    def verdicts(self, scope: str) -> list[Verdict]:
        """Every stored verdict of devices or groups (``scope``), by name, model, version and feature."""

    def alert_counts(self, *, since: float) -> list[AlertCount]:
        """Alerts raised since ``since`` (still within retention), per kind, scope and level, sorted."""


class CensusReads:
    """:class:`FleetCensus` over SQL (mixed into :class:`~edgekit.monitor.store.sql.SqlStore`)."""

    def _read(self) -> AbstractContextManager[Db]:
        raise NotImplementedError

    def device_counts(self) -> list[DeviceCount]:
        with self._read() as db:
            rows = db.rows("SELECT grp, model, version, status, agent_version, runtime, runtime_status, COUNT(*) FROM devices "
                           "GROUP BY grp, model, version, status, agent_version, runtime, runtime_status")
        out = [DeviceCount(r[0], r[1], r[2], r[3], r[4], r[5], r[6], int(r[7])) for r in rows]
        return sorted(out, key=lambda c: tuple("" if v is None else str(v) for v in vars(c).values()))

    def verdicts(self, scope: str) -> list[Verdict]:
        with self._read() as db:
            rows = db.rows("SELECT scope, name, model, version, feature, level, psi, since, updated FROM drift_state WHERE scope = ? "
                           "ORDER BY name, model, version, feature", (scope,))
        return [Verdict(*r) for r in rows]

    def alert_counts(self, *, since: float) -> list[AlertCount]:
        with self._read() as db:
            rows = db.rows("SELECT kind, scope, level, COUNT(*) FROM alerts WHERE ts >= ? GROUP BY kind, scope, level "
                           "ORDER BY kind, scope, level", (since,))
        return [AlertCount(k, s, lv, int(n)) for k, s, lv, n in rows]
