"""Named crash points for crash-safety tests: ``EDGEKIT_CRASHPOINT=name[:k]`` makes the process
SIGKILL itself the k-th time (default 1st) it reaches ``crashpoint(name)``.

Unset (production), ``crashpoint`` is one global lookup. The points mark the moments between two
durable steps of an update (a write and its fsync, a rename and its directory fsync, a state
change and its action), which is where a power cut is interesting.
"""

from __future__ import annotations

import os
import signal

__all__ = ["crashpoint"]

_SPEC = os.environ.get("EDGEKIT_CRASHPOINT") or None
_NAME, _, _K = (_SPEC or "").partition(":")
_TARGET = int(_K) if _K.isdigit() else 1
_hits = 0


def crashpoint(name: str) -> None:
    """Die here (SIGKILL: no cleanup, no flush) when this is the configured crash point."""
    global _hits
    if _SPEC is None or name != _NAME:
        return
    _hits += 1
    if _hits >= _TARGET:
        os.kill(os.getpid(), signal.SIGKILL)
