"""Number formatting shared by the terminal table and the HTML page, so both read the same."""

from __future__ import annotations

from typing import Any

__all__ = ["COLUMNS", "cell", "quality_header", "slower"]

DASH = "—"
#: latency ratios above this read as a regression (the noise band of a shared CPU)
SLOWER = 1.05

#: (header, row key) in display order; the quality column is added by ``quality_header``
COLUMNS: list[tuple[str, str]] = [
    ("file", "file"),
    ("format", "format"),
    ("precision", "precision"),
    ("size", "size_bytes"),
    ("gzip", "gzip_bytes"),
    ("size ×", "size_ratio"),
    ("params", "params"),
    ("sparsity", "sparsity"),
    ("int8 weights", "quantized_share"),
    ("p50 ms", "latency_p50_ms"),
    ("p95 ms", "latency_p95_ms"),
    ("p50 ×", "latency_ratio"),
    ("QUALITY", "QUALITY"),
    ("max err", "max_abs_error"),
]


def size(n: int | None) -> str:
    if n is None:
        return DASH
    if n >= 1e6:
        return f"{n / 1e6:.2f} MB"
    if n >= 1e3:
        return f"{n / 1e3:.1f} kB"
    return f"{n} B"


def quality_header(metric: str) -> str:
    return {"accuracy": "accuracy", "agreement": "agreement", "cosine": "cosine"}[metric]


def cell(row: dict[str, Any], key: str, metric: str) -> str:
    """The display text of one table cell."""
    if key == "QUALITY":
        v = row.get(metric)
        if v is None:
            return DASH
        return f"{v:.4f}" if metric == "cosine" else f"{v:.2f}%"
    v = row.get(key)
    if v is None:
        return DASH
    if key in ("size_bytes", "gzip_bytes"):
        return size(v)
    if key in ("size_ratio", "latency_ratio", "gzip_ratio"):
        return f"{v:.2f}"
    if key in ("sparsity", "quantized_share"):
        return f"{v:.0%}"
    if key == "params":
        return f"{v:,}"
    if key in ("latency_p50_ms", "latency_p95_ms"):
        return f"{v:.3f}" if v < 10 else f"{v:.1f}"
    if key == "max_abs_error":
        return f"{v:.3g}"
    return str(v)


def slower(row: dict[str, Any]) -> bool:
    r = row.get("latency_ratio")
    return row.get("role") != "baseline" and r is not None and r > SLOWER
