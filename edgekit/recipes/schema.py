"""The typed parts of a recipe: what data it needs and the gates its artifacts must pass.

Steps are validated by their own configs (``edgekit.pipeline``); these models cover the rest of
the document. Both are frozen, and unknown keys are errors.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

__all__ = ["DataNeeds", "Gates", "Section", "format_bytes", "parse_bytes"]

_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 1024, "mib": 1024**2, "gib": 1024**3}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_bytes(value: Any) -> int:
    """``512000``, ``"512 kB"``, ``"2MB"``, ``"1.5 MiB"`` → bytes (kB = 1000, KiB = 1024)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ValueError(f"{value!r} is not a positive size")
        return int(value)
    m = _SIZE.match(str(value))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"{value!r} is not a size; write bytes or a number with a unit, e.g. 512 kB, 2 MB, 1.5 MiB")
    n = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if n <= 0:
        raise ValueError(f"{value!r} is not a positive size")
    return int(n)


def format_bytes(n: int) -> str:
    if n >= 1000**2:
        return f"{n / 1000**2:.2f} MB"
    if n >= 1000:
        return f"{n / 1000:.1f} kB"
    return f"{n} B"


ByteSize = Annotated[int, BeforeValidator(parse_bytes)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataNeeds(Section):
    """What ``--data`` must provide before anything runs."""

    required: bool = Field(False, description="Refuse to run without --data (static int8 calibrates on it; pruning and distillation train on it).")
    labels: bool = Field(False, description="The data must carry labels (an .npz 'labels' array, or class sub-folders of images).")
    min_samples: int = Field(1, ge=1, description="Fewest samples the data may hold.")
    note: str = Field("", description="What good data for this recipe looks like; shown by `edgekit recipes`.")


class Gates(Section):
    """Limits every artifact must meet; a miss exits 3 after the output is written (like --max-drop)."""

    max_accuracy_drop: float | None = Field(
        None, ge=0, le=100,
        description="Largest accuracy loss in points vs the source (top-1 disagreement without labels). Also bounds the int8 search.",
    )
    max_size: ByteSize | None = Field(None, description="Largest artifact file, e.g. '256 kB' or 262144.")
    max_size_ratio: float | None = Field(None, gt=0, description="Largest artifact size as a share of the source's.")
    max_latency_ms: float | None = Field(None, gt=0, description="Largest p50 latency on this CPU, milliseconds (batch 1).")
    max_latency_ratio: float | None = Field(None, gt=0, description="Largest p50 latency as a multiple of the source's.")

    def active(self) -> dict[str, float]:
        return {k: v for k, v in self.model_dump().items() if v is not None}
