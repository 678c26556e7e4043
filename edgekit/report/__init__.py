"""Comparison reports: one data structure (:func:`compress_report`), rendered as a terminal table and JSON.

``report.json`` schema (``edgekit.report`` v1): ``{schema, schema_version, model, version, threads,
baseline: Row, rows: [Row], steps, notes}`` where a Row has ``file, format, precision, size_bytes,
size_ratio, latency_p50_ms, latency_p95_ms, latency_ratio`` and, when known, ``accuracy``,
``agreement``, ``cosine``, ``max_abs_error``, ``quantized_share``, ``params``, ``sparsity``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgekit.compress import CompressResult

__all__ = ["compress_report", "render_compress_table", "write_reports"]

REPORT_SCHEMA = "edgekit.report"
REPORT_VERSION = 1


def compress_report(result: CompressResult) -> dict:
    m = result.manifest.metrics
    src = m["source"]
    rows = []
    for a in result.artifacts:
        am = m[a.file]
        row = {
            "file": a.file, "format": a.exported.format, "precision": a.exported.precision,
            "size_bytes": a.size_bytes, "size_ratio": am["size_ratio"],
            "latency_p50_ms": am["latency_p50_ms"], "latency_p95_ms": am["latency_p95_ms"], "latency_ratio": am["latency_ratio"],
        }
        for k in ("accuracy", "agreement", "cosine", "max_abs_error", "drop_pts"):
            if k in am:
                row[k] = am[k]
        if a.stats:
            row.update({"params": a.stats["params"], "quantized_share": a.stats["quantized_share"], "sparsity": a.stats["sparsity"],
                        "quantized_nodes": a.stats["quantized_nodes"], "weighted_nodes": a.stats["weighted_nodes"]})
        if a.parity:
            row["parity"] = a.parity
        rows.append(row)
    return {
        "schema": REPORT_SCHEMA,
        "schema_version": REPORT_VERSION,
        "model": result.manifest.name,
        "version": result.manifest.version,
        "output": str(result.output),
        "threads": result.threads,
        "data": result.manifest.raw.get("data"),
        "baseline": {"file": result.source.name, "format": "onnx", "precision": "fp32", "size_bytes": result.source_size,
                     "latency_p50_ms": src["latency_p50_ms"], "latency_p95_ms": src["latency_p95_ms"],
                     **({"accuracy": src["accuracy"]} if "accuracy" in src else {})},
        "rows": rows,
        "steps": result.steps,
        "notes": result.notes,
        "accuracy_bound_failed": result.failed_bound,
    }


def write_reports(result: CompressResult, out_dir: Path) -> None:
    (out_dir / "report.json").write_text(json.dumps(compress_report(result), indent=2) + "\n")


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def render_compress_table(result: CompressResult, console) -> None:
    """The short table ``edgekit compress`` prints: size, latency and quality before/after."""
    from rich.table import Table

    rep = compress_report(result)
    base = rep["baseline"]
    quality_label = "accuracy" if "accuracy" in base else "agreement"
    t = Table(title=f"{rep['model']} {rep['version']}  (latency: batch 1, {rep['threads']} thread(s), this CPU)", title_justify="left")
    for col in ("artifact", "precision", "size", "size ×", "p50 ms", "p50 ×", quality_label, "quantized"):
        t.add_column(col, justify="left" if col in ("artifact", "precision") else "right")
    base_q = f"{base['accuracy']:.2f}%" if "accuracy" in base else "—"
    t.add_row(base["file"], "fp32", _mb(base["size_bytes"]), "1.00", f"{base['latency_p50_ms']:.3f}", "1.00", base_q, "—")
    for r in rep["rows"]:
        if quality_label == "accuracy":
            q = f"{r['accuracy']:.2f}%" if "accuracy" in r else "—"
        elif "agreement" in r:
            q = f"{r['agreement']:.2f}%"
        else:
            q = f"cos {r.get('cosine', 0):.4f}"
        quant = (f"{r['quantized_nodes']}/{r['weighted_nodes']} nodes · {r['quantized_share']:.0%} weights"
                 if "quantized_nodes" in r and r["precision"] == "int8" else "—")
        t.add_row(r["file"], r["precision"], _mb(r["size_bytes"]), f"{r['size_ratio']:.2f}", f"{r['latency_p50_ms']:.3f}",
                  f"{r['latency_ratio']:.2f}", q, quant)
    console.print(t)
    for s in rep["steps"]:
        search = (s.get("result") or {}).get("search")
        if search:
            console.print(f"int8: chose [bold]{search['chosen']}[/bold] — {search['why']}", soft_wrap=True)
            tried = ", ".join(
                f"{c['name']} {c['latency_ratio']:.2f}x/{c['quality']['drop_pts']:+.2f}pt" if c["status"] == "ok" else f"{c['name']} ({c['status']})"
                for c in search["candidates"]
            )
            console.print(f"      candidates (latency × fp32 / accuracy drop): {tried}", style="dim", soft_wrap=True)
