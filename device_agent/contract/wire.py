"""Readers for one field of a decoded MQTT message: each checks the type and raises ProtocolError naming the field."""

from __future__ import annotations

import math
from collections.abc import Mapping
from enum import Enum
from typing import Any

from device_agent.contract.errors import ProtocolError
from device_agent.contract.topics import valid_id


def _finite(x: object) -> object:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, Enum):
        return x.value
    return x


def _need(d: Mapping[str, Any], keys: tuple[str, ...], what: str) -> None:
    missing = [k for k in keys if k not in d]
    if missing:
        raise ProtocolError(f"{what} message is missing {', '.join(missing)}")


def _str(d: Mapping[str, Any], key: str) -> str:
    value = d[key]
    if not isinstance(value, str):
        raise ProtocolError(f"{key} must be a string, got {type(value).__name__}")
    return value


def _int(d: Mapping[str, Any], key: str) -> int:
    value = d[key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(f"{key} must be an integer, got {value!r}")
    return value


def _num(d: Mapping[str, Any], key: str) -> float:
    value = d[key]
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ProtocolError(f"{key} must be a number, got {value!r}")
    return float(value)


def _finite_num(d: Mapping[str, Any], key: str) -> float:
    value = _num(d, key)
    if not math.isfinite(value):
        raise ProtocolError(f"{key} must be a finite number, got {value!r}")
    return value


def _target(d: Mapping[str, Any], key: str) -> str:
    """A command's ``device`` or ``group``: empty, or an id usable in a topic."""
    value = d.get(key) or ""
    if value and not valid_id(value):
        raise ProtocolError(f"command: {key} {value!r} must be empty or 1-64 of A-Z a-z 0-9 _ . -")
    return str(value)


def _choice(d: Mapping[str, Any], key: str, enum: type[Enum]) -> str:
    allowed = [str(e.value) for e in enum]
    value = d[key]
    if value not in allowed:
        raise ProtocolError(f"{key} is {value!r}; allowed: {', '.join(allowed)}")
    return str(value)
