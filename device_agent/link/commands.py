"""Commands from the fleet, routed to their handlers: one handler per kind, on the MQTT thread.

A command no handler takes, or one that cannot be read but names its job, is answered REJECTED,
so the fleet is never left waiting: once, not retained (``reject`` is the daemon's answer to commands
it did not accept, so unreadable junk leaves nothing on the broker). Artifact chunks (binary, not
protocol messages) go to the chunk handler.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from device_agent.contract.enums import CommandKind
from device_agent.contract.protocol import Command, decode
from device_agent.contract.topics import valid_id

__all__ = ["CommandHandler", "CommandRouter"]

log = logging.getLogger("edgekit.agent")

CommandHandler = Callable[[Command], None]


class CommandRouter:
    """Dispatches what arrives on the command and chunk topics.

    Args:
        reject: answers a job as REJECTED, once and not retained: ``reject(job, detail, reason)``.
    """

    def __init__(self, reject: Callable[[str, str, str], object]) -> None:
        self._reject = reject
        self._handlers: dict[CommandKind, CommandHandler] = {}
        self.on_chunk: Callable[[str, bytes], None] | None = None

    def register(self, kind: CommandKind, handler: CommandHandler) -> None:
        """Handle ``kind`` commands (one handler per kind). Handlers run on the MQTT thread: hand
        long work (downloads, loading a model) to a thread of their own."""
        if kind in self._handlers:
            raise ValueError(f"a handler for {kind} commands is already registered")
        self._handlers[kind] = handler

    def on_message(self, topic: str, payload: bytes) -> None:
        """A message on a subscribed topic (the MQTT thread)."""
        if "/ota/" in topic:  # artifact chunks: binary, not protocol messages
            if self.on_chunk is not None and payload:
                self.on_chunk(topic, payload)
            return
        try:
            msg = decode(payload)
        except Exception as e:
            log.warning("MQTT: ignoring a malformed message on %s: %s", topic, e)
            self._reject_undecodable(payload, e)
            return
        if not isinstance(msg, Command):
            log.warning("MQTT: ignoring a %s message on the command topic %s", msg.type, topic)
            return
        handler = self._handlers.get(msg.kind)
        if handler is None:
            known = ", ".join(str(k) for k in self._handlers) or "none"
            self._reject(msg.job, f"this agent does not handle {msg.kind} commands; it handles: {known}", "")
            return
        handler(msg)

    def _reject_undecodable(self, payload: bytes, error: Exception) -> None:
        """A command we cannot parse but whose job id we can read is answered REJECTED, so the
        fleet is not left waiting (unknown protocol version, missing fields, ...)."""
        try:
            d = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            return
        job = d.get("job") if isinstance(d, dict) else None
        if isinstance(job, str) and valid_id(job) and d.get("type") in (None, "command"):
            self._reject(job, f"the command could not be read: {error}", "bad_command")
