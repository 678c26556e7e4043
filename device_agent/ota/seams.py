"""What the updater exchanges with the rest of the device: settings, job reports, the chunk
transport, and the served-model seam. Plain types; the daemon (or a test harness) supplies them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from device_agent.contract.enums import JobState
from device_agent.ota.job import Limits, ProbationPolicy
from device_agent.runtime.model import LoadedModel

__all__ = ["JobReport", "ModelRef", "OtaSettings", "ServingModel", "Transport", "model_ref"]

#: {"name", "version"} of a model, in job reports
ModelRef = dict[str, str]


@dataclass(frozen=True)
class JobReport:
    """One job state change, for the outbox (``<prefix>/<device>/jobs/<job>``).

    ``record`` is False for the answer to a command the device did not accept (unsigned, foreign,
    expired, replayed): it is sent once, best effort, neither stored in the outbox nor retained, so
    junk commands leave nothing on the broker and never replace a real job's record.
    """

    job: str
    state: JobState
    reason: str = ""
    detail: str = ""
    ota_state: str = ""
    model: ModelRef | None = None
    record: bool = True


@dataclass(frozen=True)
class OtaSettings:
    """Device-side OTA settings (the agent's ``[ota]`` config)."""

    probation: ProbationPolicy = field(default_factory=ProbationPolicy)
    limits: Limits = field(default_factory=Limits)
    keep_versions: int = 3
    queue_size: int = 4
    ca_file: str | None = None
    check_compatible: bool = True


class Transport(Protocol):
    """What the updater needs from MQTT: (un)subscribing the chunk topics of a job."""

    def subscribe(self, topic_filter: str) -> None: ...

    def unsubscribe(self, topic_filter: str) -> None: ...


class ServingModel:
    """The served model, swapped atomically. A request grabs ``.model`` once and finishes on it,
    so requests in flight during a swap complete on the model they started on."""

    def __init__(self, model: LoadedModel | None) -> None:
        self.model = model

    def get(self) -> LoadedModel | None:
        return self.model

    def swap(self, new: LoadedModel) -> LoadedModel | None:
        old, self.model = self.model, new  # one reference store: atomic under the GIL
        return old


def model_ref(model: LoadedModel | None) -> ModelRef | None:
    """The ``{"name", "version"}`` of a served model, for job reports."""
    return None if model is None else {"name": model.name, "version": model.version}
