"""The MQTT protocol between devices and the fleet: message schemas, version, encoding.

This module is the single source of truth: the agent publishes with it, edgekit's fleet side
parses with it. Payloads are compact UTF-8 JSON objects; every one carries ``v`` (protocol
version), ``type`` and ``device``. QoS 1 everywhere, never QoS 2. Topic names live in
:mod:`device_agent.contract.topics` and the enums in :mod:`device_agent.contract.enums`; both are
re-exported here, so ``from device_agent.contract.protocol import Topics, JobState`` works.

Sequence numbers: messages that go through the device's outbox (telemetry, job states) carry
``seq``, one counter per device that survives restarts and never repeats. It is contiguous, so a
gap is a loss the fleet can see; a repeat (a QoS 1 redelivery, or a resend after the agent died
before the broker's PUBACK reached it) has the same ``seq`` and is dropped by the consumer.
``dropped`` on a message counts the older messages the bounded outbox discarded before it.
State messages are retained "latest wins" values with their own order: ``boot`` (a persistent
per-device start counter) and ``seq`` (:func:`state_seq`), so a late Last Will never overrides a
newer birth.

Which runtime runs the model: the state message and every telemetry window carry ``agent_version``,
``runtime`` (the installed runtimes' versions) and ``runtime_check``
(:class:`~device_agent.contract.runtimes.RuntimeCheck`: the served artifact's runtime against the one
it was validated with), so the fleet can show and filter devices by runtime.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from device_agent.contract.enums import CommandKind, DeviceStatus, JobState, MessageType
from device_agent.contract.errors import ProtocolError
from device_agent.contract.runtimes import RuntimeCheck, RuntimeStatus
from device_agent.contract.topics import DEFAULT_PREFIX, QOS, STATE_SEQ_OFFLINE, Topics, shared, state_seq, valid_id
from device_agent.contract.types import JsonDict
from device_agent.contract.wire import _choice, _finite, _finite_num, _int, _need, _num, _str, _target

__all__ = [
    "COMMAND_VERSION",
    "COMMAND_VERSIONS",
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
    "Message",
    "MessageType",
    "RuntimeCheck",
    "RuntimeStatus",
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
#: the command schema this side writes (:class:`Command`); it reads every version in COMMAND_VERSIONS
COMMAND_VERSION = 2
COMMAND_VERSIONS = (1, 2)
#: upper bound of one telemetry payload, whatever the model (the profile decides which features fit)
TELEMETRY_MAX_BYTES = 16 * 1024


@dataclass(frozen=True)
class StateMessage:
    """Retained device state: the birth message on connect and the Last Will ("offline")."""

    device: str
    status: DeviceStatus
    ts: float
    boot: int
    agent_version: str
    group: str = "default"
    model: JsonDict | None = None  # {name, version, artifact, format, precision, runtime}
    runtime: dict[str, str] = field(default_factory=dict)  # {onnxruntime: "1.27.0", ...}
    hardware: JsonDict = field(default_factory=dict)  # {machine, system, cpus, memory_mb, python}
    reason: str | None = None  # why offline: "shutdown" | "lwt"
    seq: int = 0  # order within a boot; see STATE_SEQ_OFFLINE
    runtime_check: RuntimeCheck | None = None  # the served model's runtime against its validated one (online only)

    type: ClassVar[MessageType] = MessageType.STATE

    def to_dict(self) -> JsonDict:
        d = _envelope(self.type, self.device)
        d.update(asdict(self))
        d["status"] = str(self.status)
        d["runtime_check"] = self.runtime_check.to_dict() if self.runtime_check else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StateMessage:
        _need(d, ("device", "status", "ts", "boot", "agent_version"), "state")
        return cls(
            device=_str(d, "device"), status=DeviceStatus(_choice(d, "status", DeviceStatus)), ts=_num(d, "ts"),
            boot=_int(d, "boot"), agent_version=_str(d, "agent_version"), group=d.get("group", "default"),
            model=d.get("model"), runtime=dict(d.get("runtime") or {}), hardware=dict(d.get("hardware") or {}),
            reason=d.get("reason"), seq=int(d.get("seq", 0)), runtime_check=_runtime_check(d),
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
    ``mean``, ``std`` are over the finite values (null when there were none). A table's string column
    (:mod:`device_agent.contract.categories`) has the same shape: ``counts`` per known category, ``over``
    the unseen ones, ``nan`` the missing ones, no moments.
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
    """Delayed ground truth joined over a window (``POST /v1/feedback``, :mod:`device_agent.telemetry.feedback`).

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
    model: JsonDict | None  # {name, version}
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
    agent_version: str = ""  # as in the state message: which agent and runtime produced this window
    runtime: dict[str, str] = field(default_factory=dict)
    runtime_check: RuntimeCheck | None = None  # the window's model's runtime against its validated one

    type: ClassVar[MessageType] = MessageType.TELEMETRY

    def to_dict(self) -> JsonDict:
        d = _envelope(self.type, self.device)
        d.update(asdict(self))
        d["runtime_check"] = self.runtime_check.to_dict() if self.runtime_check else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TelemetryMessage:
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
            outbox=int(d["outbox"]) if isinstance(d.get("outbox"), int) else None, agent_version=str(d.get("agent_version") or ""),
            runtime={str(k): str(v) for k, v in (d.get("runtime") or {}).items()}, runtime_check=_runtime_check(d),
        )


@dataclass(frozen=True)
class Command:
    """A command from the fleet. ``params`` is kind-specific (the OTA room validates deploy's).

    Command version 2 (``command_version``) binds a command to its target and its time: it names
    exactly one target, ``device`` (on ``<prefix>/<device>/cmd``) or ``group`` (on
    ``<prefix>/group/<group>/cmd``), was issued at ``ts`` and is void after ``expires`` (unix
    seconds); ``auth`` is the ed25519 signature over :meth:`signed_body` — every field but ``auth``,
    so the job id, the target, the times and every parameter (probation, shadow, compatibility,
    URLs, timeout, overrides) are signed together. Version 1 (no target/expiry binding, ``auth``
    inside ``params``) is read so that devices with ``allow_unsigned`` keep working with old tools.
    """

    kind: CommandKind
    job: str
    ts: float
    params: JsonDict = field(default_factory=dict)
    device: str = ""  # the target device (command version 2: exactly one of device and group)
    group: str = ""  # the target group
    expires: float = 0.0  # unix seconds after which the command is void (version 2)
    auth: JsonDict | None = None  # {"key_id", "signature"} over signed_body() (version 2)
    command_version: int = COMMAND_VERSION

    type: ClassVar[MessageType] = MessageType.COMMAND

    def to_dict(self) -> JsonDict:
        d = _envelope(self.type, self.device)
        d.update(asdict(self))
        d["kind"] = str(self.kind)
        return d

    def signed_body(self) -> JsonDict:
        """What a version 2 signature covers: everything but ``auth`` (and the envelope's constants)."""
        return {"command_version": self.command_version, "kind": str(self.kind), "job": self.job, "device": self.device,
                "group": self.group, "ts": self.ts, "expires": self.expires, "params": self.params}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Command:
        _need(d, ("kind", "job", "ts"), "command")
        job = _str(d, "job")
        if not valid_id(job):
            raise ProtocolError(f"command: job id {job!r} must be 1-64 of A-Z a-z 0-9 _ . -")
        params = d.get("params") or {}
        if not isinstance(params, dict):
            raise ProtocolError("command: params must be an object")
        try:
            json.dumps(params, allow_nan=False)
        except ValueError:  # NaN/Infinity are not JSON: no signature can cover them, no command may carry them
            raise ProtocolError("command: params hold a non-finite number (NaN or Infinity); they must be plain JSON") from None
        version = d.get("command_version", 1)
        if version not in COMMAND_VERSIONS or isinstance(version, bool):
            raise ProtocolError(f"command_version {version!r} is not supported (this side reads "
                                f"{', '.join(map(str, COMMAND_VERSIONS))}); upgrade the agent")
        device, group = _target(d, "device"), _target(d, "group")
        auth = d.get("auth")
        if auth is not None and not (isinstance(auth, dict) and isinstance(auth.get("key_id"), str)
                                     and isinstance(auth.get("signature"), str)):
            raise ProtocolError("command: auth must be an object with string key_id and signature")
        expires = _finite_num(d, "expires") if "expires" in d else 0.0
        return cls(kind=CommandKind(_choice(d, "kind", CommandKind)), job=job, ts=_finite_num(d, "ts"), params=params, device=device,
                   group=group, expires=expires, auth=auth, command_version=int(version))


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
    model: JsonDict | None = None
    dropped: int = 0
    reason: str = ""  # machine-readable cause of a final state (OTA: "nan_outputs", "bad_signature", ...)
    ota_state: str = ""  # the device's OTA state machine state (device_agent.ota.OtaState)

    type: ClassVar[MessageType] = MessageType.JOB

    def to_dict(self) -> JsonDict:
        d = _envelope(self.type, self.device)
        d.update(asdict(self))
        d["state"] = str(self.state)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> JobUpdate:
        _need(d, ("device", "seq", "boot", "ts", "job", "state"), "job")
        return cls(
            device=_str(d, "device"), seq=_int(d, "seq"), boot=_int(d, "boot"), ts=_num(d, "ts"), job=_str(d, "job"),
            state=JobState(_choice(d, "state", JobState)), detail=str(d.get("detail", "")),
            model=d.get("model") if isinstance(d.get("model"), dict) else None, dropped=_int(d, "dropped") if "dropped" in d else 0,
            reason=str(d.get("reason", "")), ota_state=str(d.get("ota_state", "")),
        )


Message = StateMessage | TelemetryMessage | Command | JobUpdate
_TYPES: dict[str, type[Message]] = {
    MessageType.STATE: StateMessage,
    MessageType.TELEMETRY: TelemetryMessage,
    MessageType.COMMAND: Command,
    MessageType.JOB: JobUpdate,
}


def encode(message: Message | Mapping[str, Any]) -> bytes:
    """Compact JSON bytes. NaN/inf are not JSON: they become null."""
    d = message.to_dict() if isinstance(message, (StateMessage, TelemetryMessage, Command, JobUpdate)) else message
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
    kind = d.get("type")
    cls = _TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"unknown message type {kind!r}; known: {', '.join(str(t) for t in MessageType)}")
    try:
        return cls.from_dict(d)
    except (TypeError, ValueError, KeyError, AttributeError) as e:  # a field of the wrong shape the schema did not name
        raise ProtocolError(f"{kind} message is malformed: {type(e).__name__}: {e}") from None


def _runtime_check(d: Mapping[str, Any]) -> RuntimeCheck | None:
    rc = d.get("runtime_check")
    if rc is None:
        return None
    if not isinstance(rc, dict):
        raise ProtocolError(f"runtime_check must be an object, got {type(rc).__name__}")
    return RuntimeCheck.from_dict(rc)


def _envelope(kind: MessageType, device: str) -> JsonDict:
    return {"v": PROTOCOL_VERSION, "type": str(kind), "device": device}
