"""scikit-learn pipelines → ONNX: the whole fitted Pipeline, one typed input per column, checked against scikit-learn.

The columns and their types come from the pipeline (``feature_names_in_``, fitted on a DataFrame)
and the training table given with ``--data``: a column the pipeline needs and the table lacks is
one clear error. The conversion is held to ``predict``/``predict_proba`` on the table's rows before
anything else runs; every artifact is held to them again afterwards (:mod:`edgekit.tabular.check`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import onnx

from edgekit.errors import DataError, InputError
from edgekit.tabular.check import PROBA_ATOL, SklearnReference
from edgekit.tabular.convert import convert_pipeline
from edgekit.tabular.load import load_pipeline
from edgekit.tabular.table import TABLE_SUFFIXES, read_table

__all__ = ["export_sklearn"]

#: rows of the training table the conversion is checked on before the run
CHECK_ROWS = 2000


def export_sklearn(path: Path, out: Path, *, data: Path | None, say: Callable[[str], None]) -> SklearnReference:
    """Convert the pipeline at ``path`` to ``out`` (.onnx); return the check every artifact is held to."""
    if data is None or Path(data).suffix.lower() not in TABLE_SUFFIXES:
        raise InputError(f"{path.name} is a scikit-learn pipeline: pass its training table with --data (.csv or .parquet with a header), "
                         "one column per feature")
    pipeline = load_pipeline(path, say=say)
    table = read_table(Path(data))
    names = [str(c) for c in getattr(pipeline, "feature_names_in_", [])]
    if not names:
        raise InputError(f"{path.name} was fitted on an array without column names; fit it on a pandas DataFrame so its columns can be "
                         "matched with the table's")
    missing = [c for c in names if c not in table.columns]
    if missing:
        raise DataError(f"{Path(data).name} has no column {', '.join(repr(m) for m in missing)}, which {path.name} needs; "
                        f"its columns: {', '.join(map(str, table.columns))}")
    columns = [(c, not _numeric(table[c])) for c in names]
    say(f"converting {path.name} ({type(pipeline).__name__}, {len(columns)} columns) to ONNX (skl2onnx)")
    model = convert_pipeline(pipeline, columns, file=path.name)
    onnx.save(model, str(out))
    ref = SklearnReference(pipeline, path, columns)
    _check_conversion(ref, out, table.head(CHECK_ROWS))
    return ref


def _numeric(series: object) -> bool:
    import pandas as pd

    return bool(pd.api.types.is_numeric_dtype(series))


def _check_conversion(ref: SklearnReference, onnx_path: Path, rows: object) -> None:
    """The ONNX graph against scikit-learn on the table's rows: an InputError before any work when they differ."""
    from device_agent.contract.manifest import TensorSpec
    from device_agent.runtime import OrtBackend
    from edgekit.tabular.table import column_array

    feeds = {c: column_array(rows[c], TensorSpec(c, "string" if s else "float64", ("N", 1))) for c, s in ref.columns}  # type: ignore[index]
    got = OrtBackend(onnx_path).run(feeds)
    record = ref.judge(ref.expected(feeds), got, precision="fp32")
    if not record["ok"]:
        raise InputError(f"the ONNX conversion of {ref.file.name} differs from scikit-learn: top-1 agreement {record['agreement']}% "
                         f"(need {record['min_agreement']}%), probabilities up to {record['proba_max_abs_error']} apart (allowed {PROBA_ATOL})")
