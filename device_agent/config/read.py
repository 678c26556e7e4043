"""Reading ``agent.toml``: TOML → the typed sections of :mod:`device_agent.config.schema`, every field checked.

Errors name the file, the section, the key, the value, what is allowed and the fix; unknown keys
are errors (with a "did you mean"); relative paths are relative to the config file's directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
import typing
from pathlib import Path
from typing import Any

from device_agent.config.schema import SECTIONS, AgentConfig
from device_agent.contract.errors import ConfigError
from device_agent.contract.files import loose_key_problem
from device_agent.serve.auth import is_loopback

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

__all__ = ["load_config", "loads_toml", "parse_config"]


def loads_toml(text: str) -> dict[str, Any]:
    """TOML text as a dict (tomllib; tomli on Python 3.10). Raises ``tomllib.TOMLDecodeError`` (a ValueError)."""
    doc: dict[str, Any] = tomllib.loads(text)
    return doc


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
    unknown = set(doc) - set(SECTIONS) - {"state_dir"}
    if unknown:
        raise ConfigError(
            f"{source}: unknown section or key {', '.join(sorted(unknown))}; known: state_dir, {', '.join('[' + s + ']' for s in SECTIONS)}",
            field=sorted(unknown)[0],
        )
    sections = {}
    for name, cls in SECTIONS.items():
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
        problem = loose_key_problem(b.key_file, group_may_read=True) if b.key_file is not None else None
        if problem:
            raise ConfigError(f"{src}: [broker] key_file: {problem}", field="broker.key_file")
        if not cfg.model.path.exists():
            raise ConfigError(f"{src}: [model] path {str(cfg.model.path)!r} does not exist; point it at an `edgekit compress` output directory",
                              field="model.path")
        for i, k in enumerate(cfg.security.trusted_keys):
            problem = _check_public_key(k)
            if problem:
                raise ConfigError(f"{src}: [security] trusted_keys[{i}] {str(k)!r} {problem}", field="security.trusted_keys")
    _api_checks(cfg, check_files)
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


def _api_checks(cfg: AgentConfig, check_files: bool) -> None:
    src, a = cfg.source, cfg.api
    if a.enabled and a.token_file is None and not is_loopback(a.host):
        raise ConfigError(f"{src}: [api] host '{a.host}' listens beyond loopback without authentication: set [api] token_file to a file "
                          "of bearer tokens (one per line, e.g. `openssl rand -hex 32 > /etc/edgekit/api-tokens`), or host = \"127.0.0.1\"",
                          field="api.token_file")
    if (a.tls_cert is None) != (a.tls_key is None):
        which = "tls_key" if a.tls_key is None else "tls_cert"
        raise ConfigError(f"{src}: [api] tls_cert and tls_key go together; {which} is missing", field=f"api.{which}")
    if a.max_inflight_bytes < a.max_body_bytes:
        raise ConfigError(f"{src}: [api] max_inflight_bytes {a.max_inflight_bytes} is below max_body_bytes {a.max_body_bytes}: one largest "
                          "request must fit; raise it or lower max_body_bytes", field="api.max_inflight_bytes")
    if check_files:
        for name in ("token_file", "tls_cert", "tls_key"):
            p = getattr(a, name)
            if p is not None and not p.is_file():
                raise ConfigError(f"{src}: [api] {name} {str(p)!r} does not exist or is not a file", field=f"api.{name}")
