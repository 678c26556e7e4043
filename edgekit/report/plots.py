"""The report's plots as inline SVG: quality vs size (Pareto), latency bars, per-layer error.

matplotlib is imported here only, when an HTML report is rendered, through its object-oriented
``Figure`` API with the Agg backend: no window, no display needed, nothing global switched under
a user who already has pyplot open. Each SVG is cleaned for inlining: no XML prolog, no metadata,
no namespace URLs, and element ids prefixed so several plots can share one page.
"""

from __future__ import annotations

import io
import re
import sys
from typing import Any

__all__ = ["latency_svg", "layers_svg", "pareto_svg"]

_BASE = "#6b7280"
_ART = "#2563eb"
_FRONT = "#16a34a"
_WORSE = "#dc2626"


def _figure(width: float, height: float):
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=96, layout="constrained")
    return fig, fig.subplots()


def _svg(fig, prefix: str, title: str) -> str:
    import html

    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": prefix}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    s = buf.getvalue()
    s = s[s.index("<svg"):]
    s = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", s)
    s = re.sub(r'\bid="', f'id="{prefix}-', s)
    s = s.replace('href="#', f'href="#{prefix}-').replace("url(#", f"url(#{prefix}-")
    return s.replace("<svg ", f'<svg role="img" aria-label="{html.escape(title)}" class="plot" ', 1)


def _quality(row: dict[str, Any], metric: str) -> float | None:
    return row.get(metric)


def _label(metric: str) -> str:
    return {"accuracy": "accuracy (%)", "agreement": "top-1 agreement with baseline (%)", "cosine": "output cosine vs baseline"}[metric]


def pareto_svg(report: dict[str, Any]) -> str | None:
    """Quality against size, log-scaled: the frontier joins the models nothing else beats on both."""
    metric = report["quality_metric"]
    rows = [report["baseline"]] + report["rows"]
    pts = [(r["size_bytes"], _quality(r, metric), r) for r in rows if _quality(r, metric) is not None]
    if len(pts) < 2:
        return None
    from matplotlib.ticker import FuncFormatter

    fig, ax = _figure(7.2, 4.2)
    # labels of nearby points take turns above and below, so equal-accuracy artifacts stay readable
    offsets = [(6, 7), (6, -13), (6, 19), (6, -25)]
    for i, (size, q, r) in enumerate(sorted(pts, key=lambda p: p[0])):
        base = r["role"] == "baseline"
        ax.scatter([size / 1e3], [q], s=70 if base else 55, marker="s" if base else "o", color=_BASE if base else _ART, zorder=3)
        ax.annotate(r["file"], (size / 1e3, q), textcoords="offset points", xytext=offsets[i % len(offsets)], fontsize=8)
    front = _frontier([(s, q) for s, q, _ in pts])
    sizes = [s for s, _, _ in pts]
    xs = [s / 1e3 for s, _ in front] + [max(sizes) / 1e3]
    ys = [q for _, q in front] + [front[-1][1]]
    ax.step(xs, ys, where="post", color=_FRONT, lw=1.5, zorder=2, label="Pareto frontier (nothing smaller is better)")
    if max(sizes) / max(1, min(sizes)) > 10:
        from matplotlib.ticker import LogLocator

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set_xlim(min(sizes) / 1e3 * 0.85, max(sizes) / 1e3 * 1.25)
    qs = [q for _, q, _ in pts]
    span = max(qs) - min(qs)
    pad = max(span * 0.25, 0.5 if metric != "cosine" else 0.0005)
    ax.set_ylim(min(qs) - pad, max(qs) + pad)
    ax.set_xlabel("file size (kB)")
    ax.set_ylabel(_label(metric))
    ax.set_title("Quality vs size", loc="left", fontsize=11)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _svg(fig, "pareto", "Quality vs size")


def _frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    best = None
    out = []
    for s, q in sorted(points, key=lambda p: (p[0], -p[1])):
        if best is None or q > best:
            out.append((s, q))
            best = q
    return out


def latency_svg(report: dict[str, Any]) -> str | None:
    """p50 bars with the p95 as a whisker; the baseline's p50 as a dashed line; slower rows in red."""
    rows = [r for r in [report["baseline"]] + report["rows"] if r.get("latency_p50_ms") is not None]
    if not rows:
        return None
    fig, ax = _figure(7.2, 0.55 * len(rows) + 1.3)
    base = report["baseline"].get("latency_p50_ms")
    names = [r["file"] for r in rows][::-1]
    p50 = [r["latency_p50_ms"] for r in rows][::-1]
    p95 = [r["latency_p95_ms"] or r["latency_p50_ms"] for r in rows][::-1]
    colors = [_BASE if r["role"] == "baseline" else (_WORSE if (r.get("latency_ratio") or 0) > 1.05 else _ART) for r in rows][::-1]
    ax.barh(names, p50, color=colors, height=0.6, zorder=2)
    ax.errorbar(p95, names, xerr=[[max(0.0, b - a) for a, b in zip(p50, p95, strict=True)], [0] * len(p95)], fmt="none", ecolor="#111827",
                capsize=3, lw=1, zorder=3)
    if base:
        ax.axvline(base, color=_BASE, ls="--", lw=1, zorder=1)
    for y, (v, hi, r) in enumerate(zip(p50, p95, rows[::-1], strict=True)):
        ratio = f"  ({r['latency_ratio']:.2f}x)" if r.get("latency_ratio") is not None and r["role"] != "baseline" else ""
        ax.text(max(v, hi), y, f"  {v:.3g} ms{ratio}", va="center", fontsize=8)
    threads = report.get("threads", 1)
    ax.set_xlabel(f"latency, ms (bar p50, whisker to p95; batch 1, {threads} thread{'s' if threads != 1 else ''})")
    ax.set_title("Latency on this CPU", loc="left", fontsize=11)
    ax.set_xlim(0, max(p95) * 1.5)
    ax.grid(True, axis="x", alpha=0.3)
    return _svg(fig, "latency", "Latency on this CPU")


def layers_svg(file: str, block: dict[str, Any], *, top: int = 15, index: int = 0) -> str | None:
    """The layers adding the most relative error (bars) and the cumulative error there (dots)."""
    layers = [e for e in block["layers"][:top] if e["added_rel_error"] > 0]
    if not layers:
        return None
    fig, ax = _figure(7.2, 0.38 * len(layers) + 1.4)
    names = [_short(e["node"]) for e in layers][::-1]
    added = [100 * e["added_rel_error"] for e in layers][::-1]
    cum = [100 * e["rel_error"] for e in layers][::-1]
    ax.barh(names, added, color=_WORSE, height=0.6, label="added by the layer", zorder=2)
    ax.scatter(cum, names, color="#111827", s=14, zorder=3, label="cumulative at its output")
    ax.set_xlabel("relative RMS error vs the float model (%)")
    ax.set_title(f"Per-layer int8 error: {file}", loc="left", fontsize=11)
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.tick_params(axis="y", labelsize=8)
    return _svg(fig, f"layers{index}", f"Per-layer int8 error of {file}")


def _short(name: str, width: int = 38) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]
