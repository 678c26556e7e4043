"""What the probation judges share: the verdict they return and the model they run (no judging here)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

from device_agent.contract.types import Feeds

__all__ = ["Runnable", "Verdict"]


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reason: str  # "passed" | "nan_outputs" | "error_rate" | "latency" | "shadow_disagreement" | ...
    detail: str
    at: float = field(default_factory=time.monotonic)  # when it was decided (to time the rollback that follows)


class Runnable(Protocol):
    """A model that can be run (a loaded model, or a test's stand-in)."""

    def run(self, feeds: Feeds) -> Feeds: ...
