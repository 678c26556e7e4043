"""``agent.toml`` → a typed, frozen, validated :class:`AgentConfig`.

Every field is checked at start-up and an error names the field, the value, what is allowed and
how to fix it: ``agent.toml: [broker] url 'htp://b:1883' has scheme 'htp'; allowed: mqtt, mqtts``.
Unknown keys are errors too (a typo must not silently fall back to a default). Relative paths
are relative to the config file's directory. Each field's ``doc`` is its description; the example
config (``deploy/agent.toml``) and :func:`~device_agent.config.render.render_toml` are generated from
the same table.

Sections: ``[device] [broker] [model] [api] [serve] [telemetry] [outbox] [security] [ota] [log]`` plus the
top-level ``state_dir``.

This module is that table: the sections, their fields, defaults, descriptions and checks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from device_agent.contract.runtimes import RuntimeMismatchPolicy
from device_agent.contract.topics import DEFAULT_PREFIX, valid_id
from device_agent.runtime.compat import RuntimePolicy

__all__ = [
    "FORMATS",
    "SECTIONS",
    "AgentConfig",
    "ApiConfig",
    "BrokerConfig",
    "DeviceConfig",
    "LogConfig",
    "ModelConfig",
    "OtaConfig",
    "OutboxConfig",
    "SecurityConfig",
    "ServeConfig",
    "TelemetryConfig",
]

#: a field's check: an error text for a bad value (it follows the field name and value), None when fine
Check = Callable[[Any], str | None]

FORMATS = ("ort", "onnx", "tflite")


def _f(default: Any, doc: str, check: Check | None = None) -> Any:
    """A config field: default, description, and a check returning an error text (or None)."""
    meta = {"doc": doc, "check": check}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def _range(lo: float | None = None, hi: float | None = None) -> Check:
    def check(v: Any) -> str | None:
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            if hi is None:
                return f"must be ≥ {lo}"
            return f"must be between {lo} and {hi}"
        return None

    return check


def _ident(v: str) -> str | None:
    return None if valid_id(v) else "must be 1-64 of A-Z a-z 0-9 _ . - (it becomes part of MQTT topics)"


def _broker_url(v: str) -> str | None:
    if not v:
        return None  # MQTT disabled
    u = urlsplit(v)
    if u.scheme not in ("mqtt", "mqtts"):
        return f"has scheme {u.scheme!r}; allowed: mqtt, mqtts (e.g. \"mqtts://broker.lan:8883\"), or \"\" to run without MQTT"
    if not u.hostname:
        return "has no host (e.g. \"mqtt://127.0.0.1:1883\")"
    try:
        u.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return "has an invalid port"
    if u.username or u.password:
        return "must not contain credentials; use [broker] username and password_file"
    return None


def _prefix(v: str) -> str | None:
    if not v or v.startswith("/") or v.endswith("/") or "+" in v or "#" in v:
        return "must be non-empty, without leading/trailing '/' and without '+' or '#'"
    return None


def _formats(v: list[str]) -> str | None:
    bad = [x for x in v if x not in FORMATS]
    if bad:
        return f"has {', '.join(map(repr, bad))}; allowed: {', '.join(FORMATS)}"
    if not v:
        return "must list at least one format"
    return None


def _level(v: str) -> str | None:
    return None if v.lower() in ("debug", "info", "warning", "error") else "allowed: debug, info, warning, error"


@dataclass(frozen=True)
class DeviceConfig:
    id: str = _f("", "Device id: MQTT client id and topic segment (required).", _ident)
    group: str = _f("default", "Group for fleet-wide commands (<prefix>/group/<group>/cmd).", _ident)


@dataclass(frozen=True)
class BrokerConfig:
    url: str = _f("", "mqtt://host:1883 or mqtts://host:8883; empty runs the agent without MQTT.", _broker_url)
    username: str = _f("", "MQTT username (empty: none).")
    password_file: Path | None = _f(None, "File holding the MQTT password (keeps the secret out of this file).")
    ca_file: Path | None = _f(None, "CA bundle for mqtts:// (default: the system's CAs).")
    cert_file: Path | None = _f(None, "Client certificate (PEM) for mutual TLS.")
    key_file: Path | None = _f(None, "Client private key (PEM) for mutual TLS.")
    topic_prefix: str = _f(DEFAULT_PREFIX, "Topic prefix shared by the fleet.", _prefix)
    keepalive_s: int = _f(30, "MQTT keepalive in seconds.", _range(5, 3600))
    reconnect_min_s: float = _f(1.0, "First reconnect delay; doubles per failure (with jitter).", _range(0.05, 600))
    reconnect_max_s: float = _f(60.0, "Longest reconnect delay.", _range(0.1, 3600))
    protocol: str = _f("3.1.1", "MQTT protocol version: 3.1.1 or 5.", lambda v: None if v in ("3.1.1", "5") else "allowed: 3.1.1, 5")
    max_inflight: int = _f(16, "QoS 1 messages in flight before waiting for PUBACKs.", _range(1, 1000))

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        u = urlsplit(self.url)
        return u.port or (8883 if u.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"

    @property
    def enabled(self) -> bool:
        return bool(self.url)


@dataclass(frozen=True)
class ModelConfig:
    path: Path = _f(Path("model"), "Model directory from `edgekit compress` (edgekit.json + artifacts) or a bare .onnx/.ort/.tflite.")
    prefer: list[str] = _f(list(FORMATS), "Artifact formats in order of preference.", _formats)
    artifact: str = _f("", "Serve this artifact file of the manifest instead of choosing by format (empty: choose).")
    threads: int = _f(0, "Inference threads; 0 = min(4, CPU count).", _range(0, 256))
    selftest: bool = _f(True, "Run the manifest's self-test vectors at start-up; not ready unless they pass.")
    verify_files: bool = _f(True, "Check every artifact's size and sha256 against the manifest at start-up.")
    runtime_mismatch: str = _f("warn", "When the runtime here is further than runtime_max_minor_drift from the one the model was validated "
                                       "with (its manifest's tools): warn (serve it if its self-test passes) or refuse (keep the old model "
                                       "serving; at start-up, do not become ready).",
                               lambda v: None if v in ("warn", "refuse") else "allowed: warn, refuse")
    runtime_max_minor_drift: int = _f(0, "Minor releases the runtime may be away from the validated one before it is a mismatch "
                                         "(patch releases never count, another major release always does).", _range(0, 1000))

    @property
    def runtime_policy(self) -> RuntimePolicy:
        return RuntimePolicy(RuntimeMismatchPolicy(self.runtime_mismatch), self.runtime_max_minor_drift)


@dataclass(frozen=True)
class ApiConfig:
    enabled: bool = _f(True, "Serve the local HTTP API.")
    host: str = _f("127.0.0.1", "Listen address. Anything but loopback (e.g. 0.0.0.0 in a container) requires token_file.")
    port: int = _f(8470, "Listen port (0 = any free port).", _range(0, 65535))
    token_file: Path | None = _f(None, "File of bearer tokens, one per line (`openssl rand -hex 32`); requests then need "
                                       "'Authorization: Bearer <token>' (/healthz and /readyz stay open). Required beyond loopback.")
    tls_cert: Path | None = _f(None, "PEM certificate chain: serve HTTPS (with tls_key).")
    tls_key: Path | None = _f(None, "PEM private key of tls_cert.")
    max_body_bytes: int = _f(16 << 20, "Largest request body.", _range(1024))
    max_batch: int = _f(256, "Largest batch (size of the first symbolic axis) per request.", _range(1))
    max_elements: int = _f(16 << 20, "Largest number of tensor elements per request, all inputs together.", _range(1))
    max_connections: int = _f(512, "Open HTTP connections; at the limit a new one replaces the one idle or stalled the longest "
                                   "(503 only when all are busy).", _range(1, 100000))
    max_inflight_bytes: int = _f(16 << 20, "Request body bytes held in memory at once, all connections together (at least "
                                           "max_body_bytes); a request over it waits, then gets 503 with Retry-After.", _range(1024))
    queue_timeout_s: float = _f(10.0, "How long a request waits (its bytes left in the socket) for room in max_inflight_bytes "
                                      "before its 503.", _range(0.01, 600))
    workers: int = _f(4, "Threads that run requests (parse, validate, infer, answer); sockets are read by one event loop.", _range(1, 256))
    header_timeout_s: float = _f(10.0, "A request's head (request line and headers) must arrive within this from its first byte.",
                                 _range(0.1, 3600))
    request_timeout_s: float = _f(30.0, "A whole request (head and body) must arrive within this from its first byte; also how long "
                                        "a client may take to read its answer.", _range(0.1, 3600))
    idle_timeout_s: float = _f(30.0, "Keep-alive connections idle longer than this are closed.", _range(0.1, 3600))
    top_k: int = _f(5, "Top-k labels returned for classifiers.", _range(1, 1000))


def _out_of_range(v: str) -> str | None:
    return None if v in ("reject", "warn") else "allowed: reject, warn"


@dataclass(frozen=True)
class ServeConfig:
    out_of_range: str = _f("warn", "A table value outside the training range (the manifest's fields): warn (served, counted in /metrics; "
                                   "a model may extrapolate) or reject (400 naming row and field).", _out_of_range)


@dataclass(frozen=True)
class TelemetryConfig:
    enabled: bool = _f(True, "Publish telemetry windows.")
    interval_s: float = _f(60.0, "Window length in seconds.", _range(0.05, 86400))
    max_payload_bytes: int = _f(16 * 1024, "Upper bound of one telemetry message.", _range(1024, 256 * 1024))
    max_values_per_feature: int = _f(256, "Values per feature per sample that are binned; larger inputs (images) are strided evenly "
                                          "(256 per image channel per request are plenty for a window's histogram, at a quarter of the work of 1024).",
                                     _range(1))
    feedback_max_rows: int = _f(100_000, "Classifier predictions (batch rows) remembered for POST /v1/feedback (oldest forgotten first).", _range(1, 100_000_000))
    feedback_max_bytes: int = _f(8 << 20, "Memory those predictions may take (~260 bytes each: 8 MB hold ~30,000); oldest forgotten first.",
                                 _range(1024))
    feedback_retention_s: float = _f(86400.0, "How long a prediction can still receive its late ground truth (POST /v1/feedback).", _range(1))


@dataclass(frozen=True)
class OutboxConfig:
    path: Path | None = _f(None, "SQLite file; default: <state_dir>/outbox.sqlite.")
    max_messages: int = _f(10_000, "Most messages kept while the broker is unreachable (oldest dropped first).", _range(1))
    max_bytes: int = _f(32 << 20, "Most payload bytes kept (oldest dropped first).", _range(4096))
    max_age_s: float = _f(7 * 86400.0, "Messages older than this are dropped, not sent.", _range(1))
    durable: bool = _f(False, "fsync every message (synchronous=FULL); default survives crashes, not power loss.")


@dataclass(frozen=True)
class SecurityConfig:
    trusted_keys: list[Path] = _f([], "ed25519 public keys (PEM) whose signatures are accepted for model updates.")
    allow_unsigned: bool = _f(False, "Accept unsigned model updates and commands (testing only: anyone on the broker could replace the model).")


@dataclass(frozen=True)
class OtaConfig:
    enabled: bool = _f(True, "Accept model updates (deploy, rollback, cancel commands over MQTT).")
    store_dir: Path | None = _f(None, "Model store (one directory per version); default: <state_dir>/models.")
    keep_versions: int = _f(3, "Versions kept on disk (current and previous always are).", _range(2, 100))
    queue_size: int = _f(4, "Update jobs queued behind the running one; more are refused.", _range(0, 100))
    max_update_bytes: int = _f(512 << 20, "Largest update (all artifacts together) accepted.", _range(1024))
    probation_requests: int = _f(200, "Requests a new model serves on probation before it is committed (a job may override).", _range(1))
    probation_seconds: float = _f(300.0, "...or seconds on probation, whichever comes first.", _range(0))
    probation_min_requests: int = _f(20, "Requests before the error-rate and latency checks apply.", _range(1))
    max_error_rate: float = _f(0.02, "Roll back when the runtime error rate on probation exceeds this.", _range(0, 1))
    max_latency_ratio: float = _f(3.0, "Roll back when p95 latency exceeds this x the previous model's.", _range(1))
    latency_floor_ms: float = _f(0.25, "...and exceeds it by more than this (sub-ms jitter is not a regression).", _range(0))
    max_crashes: int = _f(2, "Roll back after this many agent restarts while on probation.", _range(1, 100))
    download_ca_file: Path | None = _f(None, "CA bundle for https:// artifact URLs (default: the system's CAs).")


@dataclass(frozen=True)
class LogConfig:
    level: str = _f("info", "debug, info, warning or error.", _level)


@dataclass(frozen=True)
class AgentConfig:
    device: DeviceConfig
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    ota: OtaConfig = field(default_factory=OtaConfig)
    log: LogConfig = field(default_factory=LogConfig)
    state_dir: Path = Path("state")
    source: str = "agent.toml"

    @property
    def outbox_path(self) -> Path:
        return self.outbox.path or self.state_dir / "outbox.sqlite"

    @property
    def store_dir(self) -> Path:
        return self.ota.store_dir or self.state_dir / "models"


#: section name -> its dataclass, in the order agent.toml lists them
SECTIONS: dict[str, type[Any]] = {
    "device": DeviceConfig,
    "broker": BrokerConfig,
    "model": ModelConfig,
    "api": ApiConfig,
    "serve": ServeConfig,
    "telemetry": TelemetryConfig,
    "outbox": OutboxConfig,
    "security": SecurityConfig,
    "ota": OtaConfig,
    "log": LogConfig,
}

