"""``agent.toml`` → a typed, frozen, validated :class:`AgentConfig`.

Every field is checked at start-up and an error names the field, the value, what is allowed and
how to fix it: ``agent.toml: [broker] url 'htp://b:1883' has scheme 'htp'; allowed: mqtt, mqtts``.
Unknown keys are errors too (a typo must not silently fall back to a default). Relative paths
are relative to the config file's directory. Each field's ``doc`` is its description; the example
config (``deploy/agent.toml``) and :func:`render_toml` are generated from the same table.

Sections: ``[device] [broker] [model] [api] [telemetry] [outbox] [security] [ota] [log]`` plus the
top-level ``state_dir``.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from device_agent.errors import ConfigError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]
from device_agent.protocol import DEFAULT_PREFIX, valid_id

__all__ = [
    "AgentConfig",
    "ApiConfig",
    "BrokerConfig",
    "DeviceConfig",
    "LogConfig",
    "ModelConfig",
    "OtaConfig",
    "OutboxConfig",
    "SecurityConfig",
    "TelemetryConfig",
    "load_config",
    "parse_config",
    "example_toml",
    "render_toml",
]

FORMATS = ("ort", "onnx", "tflite")


def _f(default: Any, doc: str, check: typing.Callable[[Any], str | None] | None = None, **kw: Any) -> Any:
    """A config field: default, description, and a check returning an error text (or None)."""
    meta = {"doc": doc, "check": check}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


def _range(lo: float | None = None, hi: float | None = None) -> typing.Callable[[Any], str | None]:
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


@dataclass(frozen=True)
class ApiConfig:
    enabled: bool = _f(True, "Serve the local HTTP API.")
    host: str = _f("127.0.0.1", "Listen address. Keep 127.0.0.1 unless a firewall protects the port.")
    port: int = _f(8470, "Listen port (0 = any free port).", _range(0, 65535))
    max_body_bytes: int = _f(16 << 20, "Largest request body.", _range(1024))
    max_batch: int = _f(256, "Largest batch (size of the first symbolic axis) per request.", _range(1))
    max_elements: int = _f(16 << 20, "Largest number of tensor elements per request, all inputs together.", _range(1))
    max_connections: int = _f(32, "Concurrent HTTP connections; more get 503.", _range(1, 10000))
    top_k: int = _f(5, "Top-k labels returned for classifiers.", _range(1, 1000))


@dataclass(frozen=True)
class TelemetryConfig:
    enabled: bool = _f(True, "Publish telemetry windows.")
    interval_s: float = _f(60.0, "Window length in seconds.", _range(0.05, 86400))
    max_payload_bytes: int = _f(16 * 1024, "Upper bound of one telemetry message.", _range(1024, 256 * 1024))
    max_values_per_feature: int = _f(256, "Values per feature per sample that are binned; larger inputs (images) are strided evenly "
                                          "(256 per image channel per request are plenty for a window's histogram, at a quarter of the work of 1024).",
                                     _range(1))
    feedback_max_rows: int = _f(100_000, "Classifier predictions (batch rows) remembered for POST /v1/feedback (oldest forgotten first).", _range(1, 100_000_000))
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


_SECTIONS: dict[str, type] = {
    "device": DeviceConfig,
    "broker": BrokerConfig,
    "model": ModelConfig,
    "api": ApiConfig,
    "telemetry": TelemetryConfig,
    "outbox": OutboxConfig,
    "security": SecurityConfig,
    "ota": OtaConfig,
    "log": LogConfig,
}


def load_config(path: str | Path, *, check_files: bool = True) -> AgentConfig:
    """Read and validate an agent.toml. ``check_files`` also requires referenced files to exist."""
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"no config file at {p}; create one from device_agent/deploy/agent.toml") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {p}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p} is not valid TOML: {e}") from None
    return parse_config(doc, base_dir=p.resolve().parent, source=str(p), check_files=check_files)


def parse_config(doc: dict[str, Any], *, base_dir: str | Path = ".", source: str = "agent.toml", check_files: bool = True) -> AgentConfig:
    """Validate a parsed TOML document (a dict) into an :class:`AgentConfig`."""
    base = Path(base_dir)
    unknown = set(doc) - set(_SECTIONS) - {"state_dir"}
    if unknown:
        raise ConfigError(
            f"{source}: unknown section or key {', '.join(sorted(unknown))}; known: state_dir, {', '.join('[' + s + ']' for s in _SECTIONS)}",
            field=sorted(unknown)[0],
        )
    sections = {}
    for name, cls in _SECTIONS.items():
        table = doc.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: {name} must be a [{name}] table, got {type(table).__name__}", field=name)
        sections[name] = _build(cls, table, name, source, base)
    state_dir = doc.get("state_dir", "state")
    if not isinstance(state_dir, str) or not state_dir:
        raise ConfigError(f"{source}: state_dir must be a non-empty path string, got {state_dir!r}", field="state_dir")
    cfg = AgentConfig(**sections, state_dir=_path(state_dir, base), source=source)
    _cross_checks(cfg, check_files)
    return cfg


def _build(cls: type, table: dict[str, Any], section: str, source: str, base: Path) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = set(table) - set(fields)
    if unknown:
        key = sorted(unknown)[0]
        close = difflib.get_close_matches(key.replace("-", "_"), list(fields), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{source}: [{section}] has unknown key {key!r}{hint}; known: {', '.join(fields)}", field=f"{section}.{key}")
    values = {}
    for name, value in table.items():
        where = f"{source}: [{section}] {name}"
        value = _coerce(value, hints[name], where, base, f"{section}.{name}")
        check = fields[name].metadata.get("check")
        problem = check(value) if check and value is not None else None
        if problem:
            raise ConfigError(f"{where} {_show(value)} {problem}", field=f"{section}.{name}")
        values[name] = value
    return cls(**values)


def _coerce(value: Any, hint: Any, where: str, base: Path, fieldname: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {_show(value)}", field=fieldname)
        return value
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{where} must be an integer, got {_show(value)}", field=fieldname)
        return value
    if hint is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where} must be a number, got {_show(value)}", field=fieldname)
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {_show(value)}", field=fieldname)
        return value
    if hint is Path or (origin is not list and args and Path in args):
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a path string, got {_show(value)}", field=fieldname)
        return _path(value, base) if value else None
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {_show(value)}", field=fieldname)
        return [_coerce(v, args[0], f"{where}[{i}]", base, fieldname) for i, v in enumerate(value)]
    raise ConfigError(f"{where}: unsupported field type {hint}", field=fieldname)  # pragma: no cover - a bug here


def _path(value: str, base: Path) -> Path:
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else base / p


def _show(value: Any) -> str:
    return repr(value) if not isinstance(value, str) else f"'{value}'"


def _cross_checks(cfg: AgentConfig, check_files: bool) -> None:
    src = cfg.source
    if not cfg.device.id:
        raise ConfigError(f"{src}: [device] id is required (e.g. id = \"pi-07\"); it names the device on the broker", field="device.id")
    b = cfg.broker
    if b.reconnect_max_s < b.reconnect_min_s:
        raise ConfigError(
            f"{src}: [broker] reconnect_max_s {b.reconnect_max_s} is below reconnect_min_s {b.reconnect_min_s}", field="broker.reconnect_max_s"
        )
    if (b.cert_file is None) != (b.key_file is None):
        which = "key_file" if b.key_file is None else "cert_file"
        raise ConfigError(f"{src}: [broker] cert_file and key_file go together; {which} is missing", field=f"broker.{which}")
    if not b.tls and (b.ca_file or b.cert_file):
        raise ConfigError(f"{src}: [broker] ca_file/cert_file are set but url {b.url!r} is not mqtts://; use mqtts:// or remove them",
                          field="broker.url")
    if b.password_file and not b.username:
        raise ConfigError(f"{src}: [broker] password_file is set but username is empty", field="broker.username")
    if check_files:
        for name in ("password_file", "ca_file", "cert_file", "key_file"):
            p = getattr(b, name)
            if p is not None and not p.is_file():
                raise ConfigError(f"{src}: [broker] {name} {str(p)!r} does not exist or is not a file", field=f"broker.{name}")
        if not cfg.model.path.exists():
            raise ConfigError(f"{src}: [model] path {str(cfg.model.path)!r} does not exist; point it at an `edgekit compress` output directory",
                              field="model.path")
        for i, k in enumerate(cfg.security.trusted_keys):
            problem = _check_public_key(k)
            if problem:
                raise ConfigError(f"{src}: [security] trusted_keys[{i}] {str(k)!r} {problem}", field="security.trusted_keys")
    if cfg.model.path.suffix and cfg.model.path.suffix not in (".onnx", ".ort", ".tflite") and cfg.model.path.is_file():
        raise ConfigError(f"{src}: [model] path {str(cfg.model.path)!r} is a {cfg.model.path.suffix} file; expected a directory, .onnx, .ort or .tflite",
                          field="model.path")


def _check_public_key(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except OSError as e:
        return f"cannot be read: {e.strerror}"
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(data)
    except ValueError:
        return "is not a PEM public key (create one with `edgekit keys generate`)"
    if not isinstance(key, Ed25519PublicKey):
        return f"is a {type(key).__name__}; only ed25519 keys are accepted"
    return None


# --- rendering -------------------------------------------------------------------------------


def render_toml(values: dict[str, dict[str, Any]] | None = None, *, state_dir: str = "/var/lib/edgekit", comments: bool = True) -> str:
    """agent.toml text: every field with its description; ``values`` override the defaults.

    ``values`` is ``{section: {key: value}}``; unknown keys raise ConfigError like a bad file.
    """
    values = values or {}
    for section, table in values.items():
        if section not in _SECTIONS:
            raise ConfigError(f"unknown section [{section}]; known: {', '.join(_SECTIONS)}", field=section)
        known = {f.name for f in dataclasses.fields(_SECTIONS[section])}
        for key in table:
            if key not in known:
                raise ConfigError(f"[{section}] has unknown key {key!r}; known: {', '.join(sorted(known))}", field=f"{section}.{key}")
    lines = ["# edgekit device agent configuration (edgekit-agent run --config THIS_FILE)", "", f"state_dir = {_toml(state_dir)}"]
    for section, cls in _SECTIONS.items():
        lines += ["", f"[{section}]"]
        for f in dataclasses.fields(cls):
            given = f.name in values.get(section, {})
            value = values.get(section, {}).get(f.name) if given else _default(f)
            if comments:
                lines.append(f"# {f.metadata['doc']}")
            if value is None:
                lines.append(f"# {f.name} = \"\"")
            else:
                lines.append(f"{f.name} = {_toml(value)}")
    return "\n".join(lines) + "\n"


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, Path):
        v = str(v)
    if isinstance(v, str):
        return '"' + re.sub(r'(["\\])', r"\\\1", v).replace("\n", "\\n") + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


#: the values of the shipped example (device_agent/deploy/agent.toml == example_toml())
EXAMPLE_VALUES: dict[str, dict[str, Any]] = {
    "device": {"id": "pi-07", "group": "default"},
    "broker": {"url": "mqtt://127.0.0.1:1883"},
    "model": {"path": "/var/lib/edgekit/model"},
}


def example_toml() -> str:
    """The commented example config shipped as ``device_agent/deploy/agent.toml``."""
    return render_toml(EXAMPLE_VALUES, state_dir="/var/lib/edgekit")
