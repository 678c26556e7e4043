"""The protocol's choices as string enums, and the one ``StrEnum`` base every device_agent enum uses.

``enum.StrEnum`` is Python 3.11+; the agent also runs on 3.10, so the base is defined here once.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["CommandKind", "DeviceStatus", "JobState", "MessageType", "StrEnum"]


class StrEnum(str, Enum):
    """A str-valued enum whose ``str()`` is its value (what goes into JSON and topics)."""

    def __str__(self) -> str:
        return str(self.value)


class MessageType(StrEnum):
    STATE = "state"
    TELEMETRY = "telemetry"
    COMMAND = "command"
    JOB = "job"


class DeviceStatus(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


class CommandKind(StrEnum):
    DEPLOY = "deploy"
    ROLLBACK = "rollback"
    CANCEL = "cancel"


class JobState(StrEnum):
    QUEUED = "QUEUED"
    IN_PROGRESS = "IN_PROGRESS"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    REJECTED = "REJECTED"
    TIMED_OUT = "TIMED_OUT"
    CANCELED = "CANCELED"
