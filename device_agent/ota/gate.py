"""The command gate: whether a command from the broker is this device's to act on, before anything changes.

Anyone who can publish on the broker can send a command, and anyone who can read it can send it
again, elsewhere, later. A command passes the gate only when all of these hold, in this order:

1. **version**: command version 2 (signed target and expiry); version 1 only where ``allow_unsigned``;
2. **signature** over every field but ``auth`` (:func:`~device_agent.ota.verify.verify_command`);
3. **target**: it names this device, or this device's group (a command for ``pi-07`` is void on ``pi-08``);
4. **time**: issued no later than now (+ clock skew), not expired (- clock skew), valid at most ``max_ttl_s``;
5. **replay record**: its job id was never accepted here (:class:`~device_agent.ota.replay.ReplayRecord`).

A command refused here changes nothing: no replay record entry, no queue entry, and its answer is
not retained on the broker (:attr:`~device_agent.ota.seams.JobReport.record` is False). Only what
passed is remembered (:meth:`CommandGate.remember`), so junk can never flush the record.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from device_agent.contract.errors import OtaError
from device_agent.contract.protocol import COMMAND_VERSION, Command
from device_agent.ota.replay import ReplayRecord
from device_agent.ota.verify import TrustedKeys, command_bytes, verify_command

__all__ = ["CLOCK_SKEW_S", "MAX_TTL_S", "UNAUTHENTICATED", "CommandGate", "Identity"]

#: the longest validity a command may claim (a signed command must not be a standing order)
MAX_TTL_S = 86400.0
#: how far the operator's and the device's clocks may disagree
CLOCK_SKEW_S = 300.0
#: refusals of commands no trusted key signed (anyone on the broker can send those); every other refusal
#: is of a command a trusted key did sign, sent where, when or how often it was not meant to be
UNAUTHENTICATED = ("old_command", "unsigned", "untrusted_key", "bad_signature")


@dataclass(frozen=True)
class Identity:
    """Who this device is, as commands name it."""

    device: str
    group: str = "default"


class CommandGate:
    """Decides whether a command is this device's to act on; remembers the ones that were.

    Args:
        trusted: the keys whose signatures count (and whether unsigned commands are allowed).
        identity: this device's id and group.
        replay: the persisted record of accepted commands.
        clock: unix seconds (tests move it).
    """

    def __init__(self, trusted: TrustedKeys, identity: Identity, replay: ReplayRecord, *, clock: Callable[[], float] = time.time,
                 max_ttl_s: float = MAX_TTL_S, skew_s: float = CLOCK_SKEW_S) -> None:
        self.trusted = trusted
        self.identity = identity
        self.replay = replay
        self.clock = clock
        self.max_ttl_s = max_ttl_s
        self.skew_s = skew_s

    def check(self, cmd: Command) -> str:
        """The digest of an acceptable command. Raises OtaError (``old_command``, ``unsigned``, ``untrusted_key``,
        ``bad_signature``, ``wrong_target``, ``bad_command``, ``expired``, ``not_yet_valid``, ``replayed``,
        ``duplicate_job``, ``busy``) naming the value and the fix; nothing is recorded then."""
        if cmd.command_version < COMMAND_VERSION and not self.trusted.allow_unsigned:
            raise OtaError(f"command version {cmd.command_version} carries no signed target or expiry; this device accepts only "
                           f"signed version {COMMAND_VERSION} commands: upgrade edgekit where the command was sent from",
                           reason="old_command")
        if cmd.command_version >= COMMAND_VERSION:
            verify_command(cmd, self.trusted)
        self._target(cmd)
        if cmd.command_version >= COMMAND_VERSION:
            self._window(cmd)
        digest = self._digest(cmd)
        seen = self.replay.digest(cmd.job)
        if seen == digest:
            raise OtaError(f"job {cmd.job} was already accepted by this device; a command runs once (a replay, or a QoS 1 "
                           "redelivery): nothing was done", reason="replayed")
        if seen is not None:
            raise OtaError(f"job id {cmd.job} was already used by another command on this device; job ids are single-use "
                           "(the earlier job and its record are unaffected): send it with a new job id", reason="duplicate_job")
        self.replay.make_room()
        return digest

    def remember(self, cmd: Command, digest: str) -> None:
        """Record an accepted command (:meth:`check` made room for it)."""
        self.replay.add(cmd.job, digest, kind=str(cmd.kind), expires=cmd.expires)

    def _target(self, cmd: Command) -> None:
        me = self.identity
        if cmd.command_version >= COMMAND_VERSION and bool(cmd.device) == bool(cmd.group):
            raise OtaError("the command must name exactly one target, a device or a group; it names "
                           f"{'both' if cmd.device else 'neither'}", reason="bad_command")
        if cmd.device and cmd.device != me.device:
            raise OtaError(f"the command is for device {cmd.device!r}; this is {me.device!r}: not acting on another device's command",
                           reason="wrong_target")
        if cmd.group and cmd.group != me.group:
            raise OtaError(f"the command is for group {cmd.group!r}; this device is in group {me.group!r}: not acting on another "
                           "group's command", reason="wrong_target")

    def _window(self, cmd: Command) -> None:
        now = self.clock()
        if cmd.expires <= cmd.ts:
            raise OtaError(f"the command expires ({_when(cmd.expires)}) before it was issued ({_when(cmd.ts)})", reason="bad_command")
        if cmd.expires - cmd.ts > self.max_ttl_s:
            raise OtaError(f"the command claims to be valid for {cmd.expires - cmd.ts:,.0f} s; this device accepts at most "
                           f"{self.max_ttl_s:,.0f} s: sign it with a shorter validity", reason="bad_command")
        if now < cmd.ts - self.skew_s:
            raise OtaError(f"the command was issued at {_when(cmd.ts)}, {cmd.ts - now:,.0f} s in this device's future (allowed skew "
                           f"{self.skew_s:g} s); check the clocks of the device and the operator's machine (NTP)", reason="not_yet_valid")
        if now > cmd.expires + self.skew_s:
            raise OtaError(f"the command expired at {_when(cmd.expires)}, {now - cmd.expires:,.0f} s ago (allowed skew {self.skew_s:g} s); "
                           "commands are single-shot: send it again (a new job), and check the device's clock if this repeats",
                           reason="expired")

    @staticmethod
    def _digest(cmd: Command) -> str:
        try:
            if cmd.command_version >= COMMAND_VERSION:
                data = command_bytes(cmd)
            else:  # version 1 (allow_unsigned only): what identified it before
                data = json.dumps([str(cmd.kind), cmd.ts, cmd.params, cmd.device], sort_keys=True, default=str, allow_nan=False).encode()
        except ValueError:
            raise OtaError("the command's parameters hold a non-finite number (NaN/Infinity is not JSON)", reason="bad_command") from None
        return hashlib.sha256(data).hexdigest()[:32]


def _when(ts: float) -> str:
    try:
        return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):  # a time no calendar holds: say the number
        return f"{ts:.0f} (unix time)"
