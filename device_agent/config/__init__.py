"""The config room: ``agent.toml`` → a typed, frozen, validated :class:`AgentConfig`.

- ``schema``: the sections and fields (defaults, descriptions, checks) — the one table;
- ``read``: loading and checking a file; ``render``: writing one (the shipped example, bundles).

Imports the contract room (and ``serve.auth`` for the rule that beyond loopback the API needs a
token). Only the daemon, the MQTT link, the CLI and bundles read the
config: the serving, OTA and telemetry rooms take plain arguments. The names below are
re-exported for ``from device_agent.config import ...``.
"""

from device_agent.config.read import load_config, loads_toml, parse_config
from device_agent.config.render import example_toml, render_toml
from device_agent.config.schema import (
    AgentConfig,
    ApiConfig,
    BrokerConfig,
    DeviceConfig,
    LogConfig,
    ModelConfig,
    OtaConfig,
    OutboxConfig,
    SecurityConfig,
    TelemetryConfig,
)

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
    "example_toml",
    "load_config",
    "loads_toml",
    "parse_config",
    "render_toml",
]
