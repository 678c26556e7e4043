"""The original the pipeline came from (a scikit-learn pickle run in scikit-learn), against every artifact."""

from __future__ import annotations

from html import escape
from typing import Any

__all__ = ["origin_block", "origin_html", "origin_line"]

_KINDS = {"scikit-learn": "in scikit-learn"}


def origin_block(metrics: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """``metrics["origin"]`` (size and latency of the original, run as its library runs it) with each artifact's ratios."""
    o = metrics.get("origin")
    if not o or not o.get("size_bytes"):
        return None
    lat = o.get("latency_p50_ms")
    ratios = {r["file"]: {"size_x": r["size_bytes"] / o["size_bytes"] if r.get("size_bytes") else None,
                          "latency_x": r["latency_p50_ms"] / lat if lat and r.get("latency_p50_ms") else None} for r in rows}
    return {**o, "artifacts": ratios}


def origin_line(block: dict[str, Any]) -> str:
    """One line: the original's size and latency, and how each artifact compares."""
    how = _KINDS.get(block.get("kind", ""), f"as {block.get('kind', 'given')}")
    lat = block.get("latency_p50_ms")
    head = f"against {block['file']} {how} ({block['size_bytes'] / 1000:,.1f} kB" + (f", p50 {lat:.3f} ms)" if lat else ")")
    parts = [f"{f} {_x(r['size_x'])} size, {_x(r['latency_x'])} latency" for f, r in block["artifacts"].items()]
    return head + ": " + "; ".join(parts)


def origin_html(report: dict[str, Any]) -> str:
    block = report.get("origin")
    if not block:
        return ""
    return f'<section id="origin"><h2>Against the original</h2><p>{escape(origin_line(block))}</p></section>'


def _x(v: float | None) -> str:
    return f"{v:.3g}x" if v is not None else "n/a"
