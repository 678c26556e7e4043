"""MQTT topic names and the identifiers that go into them (device ids, groups, job ids).

Topics (``prefix`` defaults to ``edgekit/v1``)::

    <prefix>/<device>/state                 retained; birth "online" on connect, LWT "offline"
    <prefix>/<device>/telemetry             one message per telemetry window
    <prefix>/<device>/cmd                   commands to one device (deploy, rollback, cancel)
    <prefix>/group/<group>/cmd              commands to a group of devices
    <prefix>/<device>/jobs/<job>            job state changes reported by the device
    <prefix>/<device>/ota/<job>/chunk/<n>   artifact chunks, when delivered over MQTT
    <prefix>/fleet/alerts/<scope>/<name>    fleet monitor alerts (scope: device | group)
    <prefix>/fleet/drift/<device>           retained drift summary per device (fleet status column)
    <prefix>/fleet/monitor/...              fleet collectors: presence (retained) and drift queries

Fleet consumers that need to scale out subscribe with shared subscriptions, e.g.
``$share/ingest/edgekit/v1/+/telemetry`` (:func:`shared`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from device_agent.contract.errors import ProtocolError

__all__ = ["DEFAULT_PREFIX", "QOS", "STATE_SEQ_OFFLINE", "Topics", "shared", "state_seq", "valid_id"]

DEFAULT_PREFIX = "edgekit/v1"
QOS = 1

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")

#: State messages are ordered by ``(boot, seq)`` with ``seq = connection << 20 | n``: births of one
#: MQTT connection count n = 1, 2, …; its "offline" (clean shutdown or Last Will) has n = this value,
#: so it supersedes that connection's births and is superseded by the next connection's. A Last Will
#: the broker delivers late (after the device already reconnected) therefore sorts before the new birth.
STATE_SEQ_OFFLINE = (1 << 20) - 1


def state_seq(connection: int, n: int) -> int:
    """The ``seq`` of a state message: ``n``-th birth of ``connection`` (or STATE_SEQ_OFFLINE)."""
    return (connection << 20) | min(n, STATE_SEQ_OFFLINE)


def valid_id(value: object) -> bool:
    """Device ids, group names and job ids: 1-64 of ``A-Z a-z 0-9 _ . -``, no MQTT wildcards or '/'."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def shared(group: str, topic_filter: str) -> str:
    """A shared-subscription filter (MQTT 5 / Mosquitto ≥ 2 / EMQX / HiveMQ) for scaling consumers out."""
    return f"$share/{group}/{topic_filter}"


@dataclass(frozen=True)
class Topics:
    """Topic names for one device. Build once from the config; all properties are plain strings."""

    device: str
    group: str = "default"
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        for what, value in (("device id", self.device), ("group", self.group)):
            if not valid_id(value):
                raise ProtocolError(f"{what} {value!r} is not usable in a topic: use 1-64 of A-Z a-z 0-9 _ . - (no '/', '+' or '#')")
        if not self.prefix or self.prefix.startswith("/") or self.prefix.endswith("/") or any(c in self.prefix for c in "+#"):
            raise ProtocolError(f"topic prefix {self.prefix!r} must be non-empty, without leading/trailing '/' and without '+' or '#'")

    @property
    def state(self) -> str:
        return f"{self.prefix}/{self.device}/state"

    @property
    def telemetry(self) -> str:
        return f"{self.prefix}/{self.device}/telemetry"

    @property
    def cmd(self) -> str:
        return f"{self.prefix}/{self.device}/cmd"

    @property
    def group_cmd(self) -> str:
        return f"{self.prefix}/group/{self.group}/cmd"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}/{self.device}/jobs/{job_id}"

    def ota_chunk(self, job_id: str, n: int) -> str:
        return f"{self.prefix}/{self.device}/ota/{job_id}/chunk/{n}"

    def ota_chunks(self, job_id: str) -> str:
        """Filter for every chunk of one job."""
        return f"{self.prefix}/{self.device}/ota/{job_id}/chunk/+"

    def subscriptions(self) -> tuple[str, ...]:
        """What a device subscribes to on connect (QoS 1)."""
        return (self.cmd, self.group_cmd)

    # fleet-side filters ------------------------------------------------------------------
    @staticmethod
    def all_states(prefix: str = DEFAULT_PREFIX) -> str:
        return f"{prefix}/+/state"

    @staticmethod
    def all_telemetry(prefix: str = DEFAULT_PREFIX) -> str:
        return f"{prefix}/+/telemetry"

    @staticmethod
    def all_jobs(prefix: str = DEFAULT_PREFIX) -> str:
        return f"{prefix}/+/jobs/+"

    @staticmethod
    def all_cmds(prefix: str = DEFAULT_PREFIX) -> tuple[str, str]:
        """Device and group command filters (the fleet monitor learns deployed manifests from them)."""
        return f"{prefix}/+/cmd", f"{prefix}/group/+/cmd"

    # fleet monitor (edgekit.monitor): alerts, collector presence, drift queries ------------------
    @staticmethod
    def fleet_alert(scope: str, name: str, prefix: str = DEFAULT_PREFIX) -> str:
        """Where an alert about one device (scope "device") or group (scope "group") is published; QoS 1."""
        return f"{prefix}/fleet/alerts/{scope}/{name}"

    @staticmethod
    def fleet_alerts(prefix: str = DEFAULT_PREFIX) -> str:
        """Filter for every fleet alert."""
        return f"{prefix}/fleet/alerts/#"

    @staticmethod
    def fleet_drift(device: str, prefix: str = DEFAULT_PREFIX) -> str:
        """Retained drift summary of one device (the ``fleet status`` drift column), kept by the collectors."""
        return f"{prefix}/fleet/drift/{device}"

    @staticmethod
    def fleet_collector(collector: str, prefix: str = DEFAULT_PREFIX) -> str:
        """Retained presence of one fleet collector ("online", Last Will "offline")."""
        return f"{prefix}/fleet/monitor/collectors/{collector}"

    @staticmethod
    def fleet_query(prefix: str = DEFAULT_PREFIX) -> str:
        """Drift queries to every collector; each answers on the query's ``reply`` topic."""
        return f"{prefix}/fleet/monitor/query"
