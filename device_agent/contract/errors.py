"""The device agent's exceptions. One tree; ``edgekit-agent`` turns any ``AgentError`` into one line.

::

    AgentError
    ├── ConfigError        agent.toml is missing, unreadable or a field does not validate
    ├── ModelError         the model directory/file cannot be loaded, or its self-test fails
    ├── NotReady           a prediction before the model is loaded and self-tested (HTTP 503)
    ├── InvalidInput       a prediction request that does not fit the model's signature (HTTP 4xx)
    │   └── PayloadTooLarge  a request over the configured size limits (HTTP 413)
    ├── ProtocolError      an MQTT message that does not follow device_agent.contract.protocol
    ├── OtaError           an update that is refused or fails (``reason`` says why, machine-readable)
    └── OutboxError        the store-and-forward database cannot be opened or written

``device_agent.runtime.BackendError`` (a runtime failed to load or run an artifact) and
``device_agent.contract.manifest.ManifestError`` are raised there; the agent wraps them in ``ModelError``.
"""

from __future__ import annotations

__all__ = ["AgentError", "ConfigError", "InvalidInput", "ModelError", "NotReady", "OtaError", "OutboxError", "PayloadTooLarge", "ProtocolError"]


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""


class ConfigError(AgentError):
    """A configuration problem; ``field`` names the offending key (``section.key``) when known."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ModelError(AgentError):
    """The model cannot be loaded or did not pass its self-test."""


class NotReady(AgentError):
    """The agent cannot answer predictions (yet): no model, or its self-test failed."""


class InvalidInput(AgentError):
    """A request that does not fit the signature. Never reaches the runtime.

    ``kind`` is a short machine-readable reason (``unknown_input``, ``missing_input``, ``dtype``,
    ``shape``, ``nonfinite``, ``too_large``, ``malformed``, ``content_type``; for table rows also
    ``missing_field``, ``unknown_field``, ``field_type``, ``unknown_category``, ``out_of_range``, ``null``);
    ``input``, ``expected`` and ``given`` say which tensor (or field) and what was wrong with it, ``row``
    which table row (0-based; only in errors about one row).
    """

    status = 400

    def __init__(self, message: str, *, kind: str, input: str | None = None, expected: str | None = None, given: str | None = None,
                 row: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.input = input
        self.expected = expected
        self.given = given
        self.row = row

    def to_dict(self) -> dict[str, str | int | None]:
        out: dict[str, str | int | None] = {"kind": self.kind, "message": str(self), "input": self.input, "expected": self.expected,
                                            "given": self.given}
        if self.row is not None:
            out["row"] = self.row
        return out


class PayloadTooLarge(InvalidInput):
    """A request body or tensor over the configured limits."""

    status = 413


class ProtocolError(AgentError):
    """An MQTT payload that is not a valid message of this protocol version."""


class OutboxError(AgentError):
    """The outbox database cannot be opened or written."""


class OtaError(AgentError):
    """An update step refused or failed. ``reason`` is a short code the fleet can count
    (``bad_signature``, ``untrusted_key``, ``sha256_mismatch``, ``downgrade``, ...); the message
    says what, which value, what is allowed and the fix."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason
