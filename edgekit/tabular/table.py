"""Tables as model inputs: a CSV or Parquet file with a header, one model input per column.

A string column feeds a ``string`` input as it is; a missing string becomes ``""`` (the value the
converted pipeline's imputers replace and its encoders treat as unknown). A numeric column feeds a
float input with NaN for missing values. ``--label COLUMN`` gives the true labels, mapped to the
model's classes in the order of its probability columns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from device_agent.contract.manifest import TensorSpec
from edgekit.errors import DataError, MissingExtraError

__all__ = ["MISSING_STRING", "TABLE_SUFFIXES", "column_array", "read_table", "table_inputs"]

TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
#: how a missing value travels in a string input
MISSING_STRING = ""


def _pandas() -> Any:
    try:
        import pandas as pd
    except ImportError:
        raise MissingExtraError("Reading tables (.csv, .parquet)", "sklearn") from None
    return pd


def read_table(path: Path) -> Any:
    """The table at ``path`` as a pandas DataFrame (CSV: header row, "NA"/empty are missing; Parquet: as stored)."""
    pd = _pandas()
    try:
        if path.suffix.lower() == ".csv":
            df = pd.read_csv(path)
        else:
            df = pd.read_parquet(path)
    except ImportError as e:
        raise MissingExtraError(f"Reading {path.suffix} files ({e})", "sklearn") from None
    except Exception as e:  # noqa: BLE001 - pandas and pyarrow raise many parser errors
        raise DataError(f"{path.name} is not a readable table: {str(e).splitlines()[0][:200]}") from None
    if df.empty:
        raise DataError(f"{path.name} holds no rows")
    return df


def column_array(values: Any, spec: TensorSpec) -> np.ndarray:
    """One column as the ``[N, 1]`` array ``spec`` takes: strings with ``""`` for missing, or floats with NaN."""
    pd = _pandas()
    if spec.dtype == "string":
        out = np.array([MISSING_STRING if pd.isna(v) else str(v) for v in values], dtype=object)
    else:
        out = pd.to_numeric(pd.Series(values), errors="raise").to_numpy(dtype=np.float64, na_value=np.nan).astype(spec.dtype)
    return out.reshape(-1, *([1] if len(spec.shape) == 2 else []))


def table_inputs(df: Any, inputs: tuple[TensorSpec, ...], *, label: str | None, classes: list[str] | None,
                 where: str) -> tuple[dict[str, np.ndarray], np.ndarray | None, list[str] | None]:
    """The model's inputs (one per column), the labels (class indices, -1 for a class the model does not know) and the class names."""
    if not all(len(s.shape) in (1, 2) and (len(s.shape) == 1 or s.shape[1] in (1, "?")) for s in inputs):
        shown = ", ".join(f"{s.name} {list(s.shape)}" for s in inputs)
        raise DataError(f"{where}: a table feeds a model with one input per column ([N, 1]); this model's inputs are {shown}; use .npz")
    columns = [str(c) for c in df.columns]
    missing = [s.name for s in inputs if s.name not in columns]
    if missing:
        raise DataError(f"{where} has no column {', '.join(repr(m) for m in missing)}, which the model needs; its columns: {', '.join(columns)}")
    arrays = {}
    for s in inputs:
        try:
            arrays[s.name] = column_array(df[s.name], s)
        except (ValueError, TypeError):
            raise DataError(f"column {s.name!r} of {where} holds values that are not numbers; the model takes {s.dtype} there") from None
    if label is None:
        return arrays, None, classes
    if label not in columns:
        raise DataError(f"--label {label!r} names no column of {where}; its columns: {', '.join(columns)}")
    return arrays, _label_ids(df[label], classes, label, where), classes


def _label_ids(values: Any, classes: list[str] | None, label: str, where: str) -> np.ndarray:
    if values.isna().any():
        raise DataError(f"--label column {label!r} of {where} has {int(values.isna().sum())} missing value(s); drop those rows")
    names = [str(v) for v in values]
    known = classes if classes is not None else sorted(set(names))
    index = {c: i for i, c in enumerate(known)}
    # a class the model was not trained on counts as a wrong answer, not as an error
    return np.array([index.get(n, -1) for n in names], dtype=np.int64)
