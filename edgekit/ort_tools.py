"""onnxruntime's Python tools as edgekit uses them: without importing torch, and without writing into the user's directory.

``onnxruntime/tools/__init__.py`` imports torch whenever it is installed (8 s here, and one more thing that can
break) for a PyTorch export helper edgekit never calls: :func:`ort_tool` imports one tool module without running
that file. ORT's symbolic shape inference saves ``sym_shape_infer_temp.onnx`` (and a ``<uuid>.data`` file) into
the *current directory* whenever it cannot infer every shape: :func:`quant_pre_process` runs it from a private
directory that is removed afterwards.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["ort_tool", "private_cwd", "quant_pre_process"]

_TOOLS = "onnxruntime.tools"


def ort_tool(name: str) -> ModuleType:
    """``onnxruntime.tools.<name>``, imported without executing ``onnxruntime/tools/__init__.py`` (its torch import)."""
    if _TOOLS not in sys.modules:
        spec = importlib.util.find_spec(_TOOLS)
        if spec is None:
            raise ImportError(f"{_TOOLS} is missing from this onnxruntime install")
        # the package's submodules are found through its __path__; its __init__ (the torch import) never runs
        package = importlib.util.module_from_spec(spec)
        sys.modules[_TOOLS] = package
        sys.modules["onnxruntime"].tools = package  # type: ignore[attr-defined]
    return importlib.import_module(f"{_TOOLS}.{name}")


@contextlib.contextmanager
def private_cwd() -> Iterator[Path]:
    """Run the block with the working directory in a new temporary directory, removed with whatever was left in it.

    The working directory is the process's: edgekit runs these tools from its one main thread.
    """
    with tempfile.TemporaryDirectory(prefix="edgekit.cwd.") as tmp, contextlib.chdir(tmp):
        yield Path(tmp)


def quant_pre_process(src: str | Path, dst: str | Path, **kwargs: Any) -> None:
    """onnxruntime's ``quant_pre_process(src, dst, **kwargs)``, run from a private working directory, torch not imported."""
    ort_tool("symbolic_shape_infer")
    from onnxruntime.quantization.shape_inference import quant_pre_process as run

    src, dst = Path(src).resolve(), Path(dst).resolve()
    with private_cwd():
        run(str(src), str(dst), **kwargs)
