"""Where a run's messages go: live lines, progress, and the notes kept for the report.

Steps (through :class:`edgekit.pipeline.Context`) and exporters (through
:class:`edgekit.export.ExportSource`) share one ``RunLog``, so their notes land in the report in
the order they happened, and the CLI shows their lines as they come.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["RunLog", "no_progress", "silent"]


def silent(message: str) -> None:
    """A ``say`` that shows nothing."""
    return None


def no_progress(message: str, fraction: float) -> None:
    """A ``progress`` that shows nothing."""
    return None


@dataclass
class RunLog:
    """``say``: one line for the user now; ``progress``: the current phase and how far it is; ``notes``: kept for the report."""

    say: Callable[[str], None] = silent
    progress: Callable[[str, float], None] = no_progress
    notes: list[str] = field(default_factory=list)

    def note(self, message: str, *, shown: str | None = None) -> None:
        """Keep ``message`` for the report; with ``shown``, also say that line now."""
        self.notes.append(message)
        if shown is not None:
            self.say(shown)
