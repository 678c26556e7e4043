"""Comparison reports: one data structure, three renderings (terminal table, JSON, self-contained HTML).

Build the structure from a ``compress`` result (:func:`compress_report`) or by measuring any
models on the same data and CPU (:func:`compare_report`); render it with :func:`render_table`
(rich), ``json.dumps`` (``report.json``) or :func:`render_html` (``report.html``: inline CSS and
SVG plots, no scripts, fonts or URLs, works offline). The report judges nothing: a recipe's gates
are evaluated by :mod:`edgekit.recipes` and arrive as data (``result.gates``); ``compress`` builds
the document once and keeps it as ``result.report``.

``report.json`` (``edgekit.report`` v1; every key in :mod:`edgekit.report.schema`, which
``edgekit report --schema`` prints as JSON Schema)::

    {schema, schema_version, kind, model, version, output, threads, runtime, data, quality_metric,
     baseline: Row, rows: [Row], layers: {file: LayerBlock}, steps, recipe, gates, notes,
     accuracy_bound_failed}

    Row: file role format precision size_bytes gzip_bytes size_ratio gzip_ratio params sparsity
         quantized_share quantized_nodes weighted_nodes latency_p50_ms latency_p95_ms latency_ratio
         accuracy agreement cosine max_abs_error drop_pts parity        (all present; null = unknown)

Module map: ``build`` (the structure), ``files`` (what a file is: format, precision, sizes,
weights), ``layers`` (per-layer int8 error), ``table`` / ``html`` / ``plots`` (renderings).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.report.build import compare_report, compress_report
from edgekit.report.schema import REPORT_SCHEMA, REPORT_VERSION, json_schema

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "REPORT_SCHEMA",
    "REPORT_VERSION",
    "compare_report",
    "compress_report",
    "json_schema",
    "render_compress_table",
    "render_html",
    "render_table",
    "to_json",
    "write_reports",
]


def to_json(report: dict[str, Any]) -> str:
    """The report as JSON text: keys in schema order, 2-space indent, trailing newline."""
    return json.dumps(report, indent=2, ensure_ascii=False) + "\n"


def render_html(report: dict[str, Any]) -> str:
    """The self-contained HTML page (matplotlib is imported here, not before)."""
    from edgekit.report.html import render_html as _render

    return _render(report)


def render_table(report: dict[str, Any], console: Console) -> None:
    """The terminal rendering: comparison table, worst int8 layers, gates, notes."""
    from edgekit.report.table import render_table as _render

    _render(report, console)


def write_reports(report: dict[str, Any], out_dir: Path) -> None:
    """Write ``report.json`` and ``report.html`` of ``report`` into ``out_dir``."""
    (out_dir / "report.json").write_text(to_json(report), encoding="utf-8")
    (out_dir / "report.html").write_text(render_html(report), encoding="utf-8")


def render_compress_table(report: dict[str, Any], console: Console) -> None:
    """What ``edgekit compress`` prints for a compress report: the comparison table, then the int8 search and the worst layers."""
    from edgekit.report.table import render_search

    render_table(report, console)
    render_search(report, console)
