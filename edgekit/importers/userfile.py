"""Import a user's Python file by path (``nets.py:factory``), fresh, with its neighbours importable."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["import_user_file"]


def import_user_file(path: Path) -> ModuleType:
    """Execute ``path`` as a new module and return it.

    Its directory goes first on ``sys.path`` while it runs, so ``from nets import X`` finds the
    ``nets.py`` beside it — and a ``nets`` module cached from another directory (an earlier call,
    a notebook cell) is dropped first, or Python would hand back the stale one.
    Raises whatever the file raises; callers turn it into an InputError with their own wording.
    """
    folder = path.resolve().parent
    for neighbour in folder.glob("*.py"):
        cached = sys.modules.get(neighbour.stem)
        cached_file = getattr(cached, "__file__", None)
        if cached is not None and cached_file and Path(cached_file).resolve().parent != folder:
            del sys.modules[neighbour.stem]
    name = f"edgekit_user_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(folder))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(folder))
    return module
