"""The MQTT protocol between devices and the fleet: topics, message schemas, version.

This module is the single source of truth: the agent publishes with it, edgekit's fleet side
parses with it. Payloads are compact UTF-8 JSON objects; every one carries ``v`` (protocol
version), ``type`` and ``device``. QoS 1 everywhere, never QoS 2.

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

Sequence numbers: messages that go through the device's outbox (telemetry, job states) carry
``seq``, one counter per device that survives restarts and never repeats. It is contiguous, so a
gap is a loss the fleet can see; a repeat (a QoS 1 redelivery, or a resend after the agent died
before the broker's PUBACK reached it) has the same ``seq`` and is dropped by the consumer.
``dropped`` on a message counts the older messages the bounded outbox discarded before it.
State messages are retained "latest wins" values with their own order: ``boot`` (a persistent
per-device start counter) and ``seq`` (:func:`state_seq`), so a late Last Will never overrides a
newer birth.

Fleet consumers that need to scale out subscribe with shared subscriptions, e.g.
``$share/ingest/edgekit/v1/+/telemetry`` (:func:`shared`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from device_agent.errors import ProtocolError

__all__ = [
    "DEFAULT_PREFIX",
    "PROTOCOL_VERSION",
    "QOS",
    "STATE_SEQ_OFFLINE",
    "TELEMETRY_MAX_BYTES",
    "Command",
    "CommandKind",
    "DeviceStatus",
    "FeatureWindow",
    "FeedbackWindow",
    "JobState",
    "JobUpdate",
    "LatencySummary",
    "MessageType",
    "StateMessage",
    "TelemetryMessage",
    "Topics",
    "decode",
    "encode",
    "shared",
    "state_seq",
    "valid_id",
]

PROTOCOL_VERSION = 1
DEFAULT_PREFIX = "edgekit/v1"
QOS = 1
#: upper bound of one telemetry payload, whatever the model (the profile decides which features fit)
TELEMETRY_MAX_BYTES = 16 * 1024

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")


class _StrEnum(str, Enum):  # enum.StrEnum is 3.11+; the agent also runs on 3.10
    def __str__(self) -> str:
        return self.value


class MessageType(_StrEnum):
    STATE = "state"
    TELEMETRY = "telemetry"
    COMMAND = "command"
    JOB = "job"


class DeviceStatus(_StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


class CommandKind(_StrEnum):
    DEPLOY = "deploy"
    ROLLBACK = "rollback"
    CANCEL = "cancel"


class JobState(_StrEnum):
    QUEUED = "QUEUED"
    IN_PROGRESS = "IN_PROGRESS"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    REJECTED = "REJECTED"
    TIMED_OUT = "TIMED_OUT"
    CANCELED = "CANCELED"


#: State messages are ordered by ``(boot, seq)`` with ``seq = connection << 20 | n``: births of one
#: MQTT connection count n = 1, 2, …; its "offline" (clean shutdown or Last Will) has n = this value,
#: so it supersedes that connection's births and is superseded by the next connection's. A Last Will
#: the broker delivers late (after the device already reconnected) therefore sorts before the new birth.
STATE_SEQ_OFFLINE = (1 << 20) - 1


def state_seq(connection: int, n: int) -> int:
    """The ``seq`` of a state message: ``n``-th birth of ``connection`` (or STATE_SEQ_OFFLINE)."""
    return (connection << 20) | min(n, STATE_SEQ_OFFLINE)


def valid_id(value: str) -> bool:
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


# --- messages ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StateMessage:
    """Retained device state: the birth message on connect and the Last Will ("offline")."""

    device: str
    status: DeviceStatus
    ts: float
    boot: int
    agent_version: str
    group: str = "default"
    model: dict[str, Any] | None = None  # {name, version, artifact, format, precision, runtime}
    runtime: dict[str, str] = field(default_factory=dict)  # {onnxruntime: "1.27.0", ...}
    hardware: dict[str, Any] = field(default_factory=dict)  # {machine, system, cpus, memory_mb, python}
    reason: str | None = None  # why offline: "shutdown" | "lwt"
    seq: int = 0  # order within a boot; see STATE_SEQ_OFFLINE

    type = MessageType.STATE

    def to_dict(self) -> dict[str, Any]:
        d = _envelope(self.type, self.device)
        d.update(asdict(self))
        d["status"] = str(self.status)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StateMessage:
        _need(d, ("device", "status", "ts", "boot", "agent_version"), "state")
        return cls(
            device=_str(d, "device"), status=DeviceStatus(_choice(d, "status", DeviceStatus)), ts=_num(d, "ts"),
            boot=_int(d, "boot"), agent_version=_str(d, "agent_version"), group=d.get("group", "default"),
            model=d.get("model"), runtime=dict(d.get("runtime") or {}), hardware=dict(d.get("hardware") or {}),
            reason=d.get("reason"), seq=int(d.get("seq", 0)),
        )


@dataclass(frozen=True)
class LatencySummary:
    """Inference latency over a window, milliseconds (runtime only, not HTTP)."""

    count: int
    p50: float
    p95: float
    p99: float
    max: float
    mean: float


@dataclass(frozen=True)
class FeatureWindow:
    """One input feature over a window, binned on the manifest's reference edges.

    ``counts[i]`` counts values in ``[edges[i], edges[i+1])`` (the last bin is closed);
    ``under``/``over`` count finite values below ``edges[0]``/above ``edges[-1]``; ``nan`` counts
    NaN and ±inf. ``n`` = all values seen = sum(counts) + under + over + nan. ``min``, ``max``,
    ``mean``, ``std`` are over the finite values (null when there were none).
    """

    name: str
    n: int
    counts: list[int]
    under: int
    over: int
    nan: int
    min: float | None
    max: float | None
    mean: float | None
    std: float | None


@dataclass(frozen=True)
class FeedbackWindow:
    """Delayed ground truth joined over a window (``POST /v1/feedback``, :mod:`device_agent.feedback`).

    ``accuracy`` is keyed by the model version that made the predictions (labels may arrive after
    an update): ``{version: {"labelled": rows, "correct": rows}}``. ``rejected`` counts feedback
    items that could not be used, by reason (unknown_id, duplicate, bad_label, malformed);
    ``expired`` counts predictions that left the bounded log without a (complete) label.
    """

    accuracy: dict[str, dict[str, int]]
    rejected: dict[str, int]
    expired: int = 0


@dataclass(frozen=True)
class TelemetryMessage:
    """One telemetry window. Contains summaries only, never raw inputs."""

    device: str
    seq: int
    boot: int
    ts: float
    model: dict[str, Any] | None  # {name, version}
    window: dict[str, float]  # {start, end} unix seconds
    requests: int
    errors: dict[str, int]
    latency_ms: LatencySummary | None
    features: list[FeatureWindow]
    features_dropped: int = 0  # tracked features left out to keep the payload under TELEMETRY_MAX_BYTES
    samples: int = 0  # input samples (rows of the batch axis) summarised in the features
    dropped: int = 0  # older outbox messages discarded before this one
    feedback: FeedbackWindow | None = None  # late ground truth joined in this window (classifiers)
    outbox: int | None = None  # messages waiting in the device's outbox when this one was queued (fleet status)

    type = MessageType.TELEMETRY

    def to_dict(self) -> dict[str, Any]:
        d = _envelope(self.type, self.device)
        d.update(asdict(self))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TelemetryMessage:
        _need(d, ("device", "seq", "boot", "ts", "window", "requests", "errors", "features"), "telemetry")
        lat = d.get("latency_ms")
        try:
            features = [FeatureWindow(**f) for f in d["features"]]
            latency = LatencySummary(**lat) if lat else None
            fb = d.get("feedback")
            feedback = FeedbackWindow(**fb) if fb else None
        except TypeError as e:
            raise ProtocolError(f"telemetry: malformed feature, latency or feedback entry: {e}") from None
        return cls(
            device=_str(d, "device"), seq=_int(d, "seq"), boot=_int(d, "boot"), ts=_num(d, "ts"), model=d.get("model"),
            window=dict(d["window"]), requests=_int(d, "requests"), errors={str(k): int(v) for k, v in d["errors"].items()},
            latency_ms=latency, features=features, features_dropped=int(d.get("features_dropped", 0)),
            samples=int(d.get("samples", 0)), dropped=int(d.get("dropped", 0)), feedback=feedback,
            outbox=int(d["outbox"]) if isinstance(d.get("outbox"), int) else None,
        )


@dataclass(frozen=True)
class Command:
    """A command from the fleet. ``params`` is kind-specific (the OTA module validates deploy's)."""

    kind: CommandKind
    job: str
    ts: float
    params: dict[str, Any] = field(default_factory=dict)
    device: str = ""  # empty for group commands

    type = MessageType.COMMAND

    def to_dict(self) -> dict[str, Any]:
        d = _envelope(self.type, self.device)
        d.update(asdict(self))
        d["kind"] = str(self.kind)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Command:
        _need(d, ("kind", "job", "ts"), "command")
        job = _str(d, "job")
        if not valid_id(job):
            raise ProtocolError(f"command: job id {job!r} must be 1-64 of A-Z a-z 0-9 _ . -")
        params = d.get("params") or {}
        if not isinstance(params, dict):
            raise ProtocolError("command: params must be an object")
        return cls(kind=CommandKind(_choice(d, "kind", CommandKind)), job=job, ts=_num(d, "ts"), params=params, device=d.get("device") or "")


@dataclass(frozen=True)
class JobUpdate:
    """A job state change reported by a device (``<prefix>/<device>/jobs/<job>``)."""

    device: str
    seq: int
    boot: int
    ts: float
    job: str
    state: JobState
    detail: str = ""
    model: dict[str, Any] | None = None
    dropped: int = 0
    reason: str = ""  # machine-readable cause of a final state (OTA: "nan_outputs", "bad_signature", ...)
    ota_state: str = ""  # the device's OTA state machine state (device_agent.ota.OtaState)

    type = MessageType.JOB

    def to_dict(self) -> dict[str, Any]:
        d = _envelope(self.type, self.device)
        d.update(asdict(self))
        d["state"] = str(self.state)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JobUpdate:
        _need(d, ("device", "seq", "boot", "ts", "job", "state"), "job")
        return cls(
            device=_str(d, "device"), seq=_int(d, "seq"), boot=_int(d, "boot"), ts=_num(d, "ts"), job=_str(d, "job"),
            state=JobState(_choice(d, "state", JobState)), detail=str(d.get("detail", "")), model=d.get("model"),
            dropped=int(d.get("dropped", 0)), reason=str(d.get("reason", "")), ota_state=str(d.get("ota_state", "")),
        )


Message = StateMessage | TelemetryMessage | Command | JobUpdate
_TYPES: dict[str, Any] = {
    MessageType.STATE: StateMessage,
    MessageType.TELEMETRY: TelemetryMessage,
    MessageType.COMMAND: Command,
    MessageType.JOB: JobUpdate,
}


def encode(message: Message | dict[str, Any]) -> bytes:
    """Compact JSON bytes. NaN/inf are not JSON: they become null."""
    d = message if isinstance(message, dict) else message.to_dict()
    return json.dumps(_finite(d), separators=(",", ":"), allow_nan=False).encode()


def decode(payload: bytes | str) -> Message:
    """Parse and validate one payload; raises ProtocolError naming what is wrong."""
    try:
        d = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProtocolError(f"payload is not JSON: {e}") from None
    if not isinstance(d, dict):
        raise ProtocolError(f"payload must be a JSON object, got {type(d).__name__}")
    v = d.get("v")
    if v != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {v!r} is not supported (this side speaks {PROTOCOL_VERSION})")
    cls = _TYPES.get(d.get("type"))  # type: ignore[arg-type]
    if cls is None:
        raise ProtocolError(f"unknown message type {d.get('type')!r}; known: {', '.join(str(t) for t in MessageType)}")
    return cls.from_dict(d)


def _envelope(kind: MessageType, device: str) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "type": str(kind), "device": device}


def _finite(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, Enum):
        return x.value
    return x


def _need(d: dict[str, Any], keys: tuple[str, ...], what: str) -> None:
    missing = [k for k in keys if k not in d]
    if missing:
        raise ProtocolError(f"{what} message is missing {', '.join(missing)}")


def _str(d: dict[str, Any], key: str) -> str:
    if not isinstance(d[key], str):
        raise ProtocolError(f"{key} must be a string, got {type(d[key]).__name__}")
    return d[key]


def _int(d: dict[str, Any], key: str) -> int:
    if not isinstance(d[key], int) or isinstance(d[key], bool):
        raise ProtocolError(f"{key} must be an integer, got {d[key]!r}")
    return d[key]


def _num(d: dict[str, Any], key: str) -> float:
    if not isinstance(d[key], (int, float)) or isinstance(d[key], bool):
        raise ProtocolError(f"{key} must be a number, got {d[key]!r}")
    return float(d[key])


def _choice(d: dict[str, Any], key: str, enum: type[Enum]) -> str:
    allowed = [e.value for e in enum]
    if d[key] not in allowed:
        raise ProtocolError(f"{key} is {d[key]!r}; allowed: {', '.join(allowed)}")
    return d[key]
