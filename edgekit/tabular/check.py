"""The converted pipeline checked against scikit-learn itself, and what the manifest says about its raw input.

:class:`SklearnReference` is an :class:`~edgekit.reference.OriginCheck`: every artifact's
``probabilities`` and ``label`` on the evaluation rows against ``predict_proba``/``predict`` of the
pipeline as loaded. A float artifact must agree on ≥ :data:`MIN_AGREEMENT` % of the rows with
probabilities within :data:`PROBA_ATOL`; int8 artifacts are recorded (the int8 search's bound judges them).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from device_agent.contract.fields import FieldSpec
from edgekit.tabular.convert import TREE_ENSEMBLES, steps_of
from edgekit.tabular.table import MISSING_STRING

__all__ = ["MIN_AGREEMENT", "PROBA_ATOL", "SklearnReference"]

MIN_AGREEMENT = 99.9
PROBA_ATOL = 1e-5
#: categories kept per string column in the drift profile (the rest count as "other")
MAX_CATEGORIES = 50


class SklearnReference:
    """The fitted pipeline: ``predict``/``predict_proba`` on the rows the artifacts see."""

    def __init__(self, pipeline: Any, file: Path, columns: list[tuple[str, bool]]) -> None:
        self.pipeline = pipeline
        self.file = file
        self.columns = columns
        self.classes = [str(c) for c in pipeline.classes_]
        self.against = f"scikit-learn {type(pipeline).__name__}.predict_proba ({file.name})"
        self.trees = sorted({type(s).__name__ for _, s in steps_of(pipeline)} & TREE_ENSEMBLES)

    def frame(self, feeds: dict[str, np.ndarray]) -> Any:
        """The rows as the DataFrame the pipeline was fitted on: ``""`` back to missing in string columns."""
        import pandas as pd

        data = {}
        for name, is_string in self.columns:
            v = np.asarray(feeds[name]).reshape(-1)
            data[name] = pd.Series([np.nan if x == MISSING_STRING else x for x in v], dtype=object) if is_string else v.astype(np.float64)
        return pd.DataFrame(data)

    def expected(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        df = self.frame(feeds)
        return {"probabilities": self.pipeline.predict_proba(df).astype(np.float32), "label": np.asarray(self.pipeline.predict(df))}

    def judge(self, expected: dict[str, np.ndarray], got: dict[str, np.ndarray], *, precision: str) -> dict[str, Any]:
        err = float(np.abs(expected["probabilities"].astype(np.float64) - got["probabilities"].astype(np.float64)).max(initial=0.0))
        agreement = float((expected["label"].astype(str) == np.asarray(got["label"]).astype(str)).mean() * 100)
        enforced = precision == "fp32"
        ok = not enforced or (agreement >= MIN_AGREEMENT and err <= PROBA_ATOL)
        return {"against": self.against, "agreement": round(agreement, 4), "min_agreement": MIN_AGREEMENT,
                "proba_max_abs_error": float(f"{err:.3g}"), "proba_atol": PROBA_ATOL, "enforced": enforced, "ok": ok}

    def manifest_sections(self, data: Any) -> dict[str, Any]:
        """``signature.fields`` and the drift profile's category counts from the training rows; the pipeline as run in scikit-learn."""
        fields = [f.to_dict() for f in self.fields(data.inputs)]
        return {"signature": {"fields": fields}, "drift_profile": {"categories": self.categories(data.inputs)},
                "metrics": {"origin": self.baseline(data.inputs)}, "tabular": {"classes": self.classes, "tree_ensembles": self.trees}}

    def fields(self, inputs: dict[str, np.ndarray]) -> list[FieldSpec]:
        """Each column: type, the encoder's categories and its unknown-value rule, the training range, whether it is imputed."""
        imputed, cats, unknown = _column_roles(self.pipeline)
        out = []
        for name, is_string in self.columns:
            v = np.asarray(inputs[name]).reshape(-1)
            if is_string:
                seen = sorted({str(x) for x in v if x != MISSING_STRING})
                out.append(FieldSpec(name, name, "string", "categorical", tuple(cats.get(name, seen)), unknown.get(name, "error"),
                                     nullable=name in imputed, imputed=name in imputed))
            else:
                finite = v[np.isfinite(v)]
                lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (None, None)
                out.append(FieldSpec(name, name, "float64", "numeric", min=lo, max=hi, nullable=name in imputed, imputed=name in imputed))
        return out

    def categories(self, inputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        """Category counts per string column (the most frequent :data:`MAX_CATEGORIES`; the rest as ``other``), and the missing share."""
        out = []
        for name, is_string in self.columns:
            if not is_string:
                continue
            v = np.asarray(inputs[name]).reshape(-1).astype(str)
            values, counts = np.unique(v[v != MISSING_STRING], return_counts=True)
            order = np.argsort(-counts, kind="stable")[:MAX_CATEGORIES]
            out.append({"input": name, "name": name, "values": [str(values[i]) for i in order], "counts": [int(counts[i]) for i in order],
                        "other": int(counts.sum() - counts[order].sum()), "null_share": float((v == MISSING_STRING).mean()) if v.size else 0.0})
        return out

    def baseline(self, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        """The pickle's size and scikit-learn's latency on one row: what the artifacts are set against in the report."""
        one = self.frame({k: np.asarray(v)[:1] for k, v in inputs.items()})
        self.pipeline.predict_proba(one)
        times = []
        for _ in range(30):
            t0 = time.perf_counter()
            self.pipeline.predict_proba(one)
            times.append((time.perf_counter() - t0) * 1e3)
        return {"kind": "scikit-learn", "file": self.file.name, "size_bytes": self.file.stat().st_size,
                "latency_p50_ms": round(float(np.percentile(times, 50)), 4), "latency_p95_ms": round(float(np.percentile(times, 95)), 4)}


def _column_roles(pipeline: Any) -> tuple[set[str], dict[str, tuple[str, ...]], dict[str, str]]:
    """Columns an imputer fills first, the OneHotEncoder categories and handle_unknown of each encoded column."""
    imputed: set[str] = set()
    cats: dict[str, tuple[str, ...]] = {}
    unknown: dict[str, str] = {}
    for _, step in steps_of(pipeline):
        for _, trans, cols in getattr(step, "transformers_", []):
            if isinstance(trans, str) or not isinstance(cols, (list, tuple)):
                continue
            chain = [s for _, s in trans.steps] if hasattr(trans, "steps") else [trans]
            if chain and type(chain[0]).__name__ == "SimpleImputer":
                imputed.update(str(c) for c in cols)
            for s in chain:
                if type(s).__name__ == "OneHotEncoder":
                    for c, values in zip(cols, s.categories_, strict=False):
                        cats[str(c)] = tuple(str(x) for x in values)
                        unknown[str(c)] = str(s.handle_unknown)
    return imputed, cats, unknown
