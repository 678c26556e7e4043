"""Holding artifacts to a recipe's gates, and checking ``--data`` against its data needs before work starts."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import GateError, RecipeError
from edgekit.recipes.model import Recipe
from edgekit.recipes.schema import Gates, format_bytes

__all__ = ["check_data", "evaluate_gates", "raise_on_failed_gates"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
_LABEL_KEYS = ("labels", "label", "y")


def evaluate_gates(gates: Gates | dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Every (gate, artifact) pair with its value, limit and verdict.

    ``rows`` are report rows (``edgekit.report`` schema). Returns ``{limits, results, passed}``;
    a gate whose number is unknown for a row (e.g. no quality measured) fails: a gate that cannot
    be checked has not been met.
    """
    limits = gates.active() if isinstance(gates, Gates) else {k: v for k, v in gates.items() if v is not None}
    results = []
    for row in rows:
        for gate, limit in limits.items():
            value = _value(gate, row)
            ok = value is not None and value <= limit + 1e-9
            results.append({"gate": gate, "file": row["file"], "value": value, "limit": limit, "ok": bool(ok)})
    return {"limits": limits, "results": results, "passed": all(r["ok"] for r in results)}


def _value(gate: str, row: dict[str, Any]) -> float | None:
    return {
        "max_accuracy_drop": row.get("drop_pts"),
        "max_size": row.get("size_bytes"),
        "max_size_ratio": row.get("size_ratio"),
        "max_latency_ms": row.get("latency_p50_ms"),
        "max_latency_ratio": row.get("latency_ratio"),
    }[gate]


def raise_on_failed_gates(outcome: dict[str, Any] | None, *, recipe: str, output: Path | str) -> None:
    """GateError (exit 3) naming every missed gate of ``recipe``, when the outcome (:func:`evaluate_gates`) did not pass."""
    if not outcome or outcome["passed"]:
        return
    misses = [_miss(r) for r in outcome["results"] if not r["ok"]]
    raise GateError(f"{len(misses)} gate(s) of recipe {recipe!r} missed: " + "; ".join(misses)
                    + f". The artifacts were still written to {output}")


def _miss(r: dict[str, Any]) -> str:
    gate, v, lim = r["gate"], r["value"], r["limit"]
    if v is None:
        return f"{r['file']} has no measured value for {gate}"
    if gate == "max_size":
        return f"{r['file']} is {format_bytes(int(v))}, max_size {format_bytes(int(lim))}"
    if gate == "max_accuracy_drop":
        return f"{r['file']} loses {v:.2f} pts, max_accuracy_drop {lim:g}"
    if gate == "max_latency_ms":
        return f"{r['file']} p50 {v:.3f} ms, max_latency_ms {lim:g}"
    return f"{r['file']} {gate.removeprefix('max_')} {v:.3g}, {gate} {lim:g}"


def check_data(recipe: Recipe, data: str | Path | None) -> None:
    """RecipeError before anything runs when ``data`` does not give what the recipe needs."""
    needs = recipe.data
    why = f" ({needs.note})" if needs.note else ""
    if data is None:
        if needs.required:
            raise RecipeError(f"recipe {recipe.name!r} needs data{why}: pass --data FILE (.npz with arrays named after the model's inputs "
                              "and optional 'labels', a .npy, or a folder of images)")
        return
    p = Path(data)
    if not p.exists():
        return  # compress names a missing data file itself
    samples, labelled = _peek(p)
    if needs.labels and labelled is False:
        fix = "add a 'labels' array of integer class ids" if p.suffix == ".npz" else "use an .npz with a 'labels' array or class sub-folders"
        raise RecipeError(f"recipe {recipe.name!r} needs labelled data{why}: {p.name} has no labels; {fix}")
    if samples is not None and samples < needs.min_samples:
        raise RecipeError(f"recipe {recipe.name!r} needs at least {needs.min_samples} samples{why}; {p.name} has {samples}")


def _peek(p: Path) -> tuple[int | None, bool | None]:
    """(samples, labelled) read cheaply: .npz/.npy headers only, image folders by listing. None: unknown."""
    try:
        if p.is_dir():
            files = [f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES]
            return len(files), any(f.parent != p for f in files)
        if p.suffix == ".npy":
            with open(p, "rb") as f:
                return _npy_len(f), False
        if p.suffix == ".npz":
            with zipfile.ZipFile(p) as z:
                names = [n.removesuffix(".npy") for n in z.namelist()]
                arrays = [n for n in names if n not in _LABEL_KEYS]
                samples = None
                if arrays:
                    with z.open(arrays[0] + ".npy") as f:
                        samples = _npy_len(f)
                return samples, any(k in names for k in _LABEL_KEYS)
    except (OSError, ValueError, zipfile.BadZipFile):
        pass  # compress reports unreadable data with its own message
    return None, None


def _npy_len(f) -> int | None:
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, _ = read(f)  # the header only; the data is not read
    return int(shape[0]) if shape else None
