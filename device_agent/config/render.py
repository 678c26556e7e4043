"""Writing ``agent.toml``: every field of :mod:`device_agent.config.schema` with its description.

The shipped example (``device_agent/deploy/agent.toml``) is :func:`example_toml`; bundles render
theirs with :func:`render_toml` and the values for one device.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from device_agent.config.schema import SECTIONS
from device_agent.contract.errors import ConfigError

__all__ = ["EXAMPLE_VALUES", "example_toml", "render_toml"]


def render_toml(values: dict[str, dict[str, Any]] | None = None, *, state_dir: str = "/var/lib/edgekit", comments: bool = True) -> str:
    """agent.toml text: every field with its description; ``values`` override the defaults.

    ``values`` is ``{section: {key: value}}``; unknown keys raise ConfigError like a bad file.
    """
    values = values or {}
    for section, table in values.items():
        if section not in SECTIONS:
            raise ConfigError(f"unknown section [{section}]; known: {', '.join(SECTIONS)}", field=section)
        known = {f.name for f in dataclasses.fields(SECTIONS[section])}
        for key in table:
            if key not in known:
                raise ConfigError(f"[{section}] has unknown key {key!r}; known: {', '.join(sorted(known))}", field=f"{section}.{key}")
    lines = ["# edgekit device agent configuration (edgekit-agent run --config THIS_FILE)", "", f"state_dir = {_toml(state_dir)}"]
    for section, cls in SECTIONS.items():
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


def _default(f: dataclasses.Field[Any]) -> object:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None  # every field of a section has a default; rendered as a commented-out key


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
