"""Loading a scikit-learn pipeline: ``.joblib``/``.pkl`` (pickles: code, run on load) or ``.skops`` (checked types)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgekit.errors import InputError, MissingExtraError

__all__ = ["PICKLE_SUFFIXES", "SKLEARN_SUFFIXES", "load_pipeline"]

PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")
SKLEARN_SUFFIXES = (*PICKLE_SUFFIXES, ".skops")


def load_pipeline(path: Path, *, say: Callable[[str], None]) -> Any:
    """The estimator in ``path``; InputError naming the problem when it is not a readable scikit-learn model."""
    if not path.is_file():
        raise InputError(f"model file not found: {path}")
    try:
        import sklearn  # noqa: F401 - the pipeline's classes live there
    except ImportError:
        raise MissingExtraError("scikit-learn pipelines", "sklearn") from None
    obj = _skops(path) if path.suffix.lower() == ".skops" else _pickle(path, say)
    if not hasattr(obj, "predict") or not hasattr(obj, "fit"):
        raise InputError(f"{path.name} holds a {type(obj).__module__}.{type(obj).__qualname__}, not a scikit-learn estimator or Pipeline")
    return obj


def _pickle(path: Path, say: Callable[[str], None]) -> Any:
    import joblib

    say(f"loading {path.name}: a pickle is code and runs as it loads; load only files you trust (.skops files are checked)")
    try:
        return joblib.load(path)
    except Exception as e:  # noqa: BLE001 - unpickling raises anything the file's code raises
        raise InputError(f"{path.name} is not a readable pickle ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); "
                         "save the fitted pipeline with joblib.dump(pipeline, path)") from None


def _skops(path: Path) -> Any:
    try:
        import skops.io as sio
    except ImportError:
        raise MissingExtraError(".skops files", "sklearn") from None
    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as e:  # noqa: BLE001 - a file that is not a skops archive
        raise InputError(f"{path.name} is not a readable .skops file ({str(e).splitlines()[0][:200]})") from None
    if untrusted:
        raise InputError(f"{path.name} holds types skops does not trust by default: {', '.join(untrusted)}; edgekit loads only "
                         "trusted types from a .skops file. Check them, then load it with skops.io.load(path, trusted=[...]) and save "
                         "it with joblib.dump if you trust them")
    return sio.load(path)
