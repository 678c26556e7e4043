"""Optional accelerators of the agent (orjson, pysimdjson): the module when it is installed, else None.

Each caller keeps a path without it (the stdlib's json, orjson's parse) that gives the same answers;
tests switch an accelerator off by setting the caller's module attribute to None.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["optional"]


def optional(name: str) -> ModuleType | None:
    """``import name``, or None when it is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError:  # pragma: no cover - the fallbacks are tested by switching the accelerators off
        return None
