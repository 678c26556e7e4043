"""Inline SVG plots of the fleet page: a heat map (drift per feature over time) and a line plot (a device's hours).

No script and no external asset: each cell's value is in a ``<title>`` (the browser shows it on
hover) and in the colour; every label is escaped (:func:`~edgekit.monitor.page.html.esc`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from edgekit.monitor.page.html import Html, esc

__all__ = ["heatmap", "lines"]

_CELL_W, _CELL_H, _LEFT, _TOP = 26, 18, 150, 70
_PALETTE = ("#2563eb", "#16a34a", "#9333ea", "#ea580c")


def _colour(psi: float | None, warn: float, alert: float) -> str:
    """White (no drift) through amber (warn) to red (alert and beyond); grey without a value."""
    if psi is None or not math.isfinite(psi):
        return "#e5e7eb"
    x = min(1.0, max(0.0, psi / (alert * 1.5)))
    if psi >= alert:
        return "#b91c1c"
    if psi >= warn:
        return "#f59e0b"
    g = int(255 - 80 * x)
    return f"rgb({g},{min(255, g + 20)},{g})"


def heatmap(rows: Sequence[str], columns: Sequence[str], values: Sequence[Sequence[float | None]], *, title: str,
            warn: float = 0.1, alert: float = 0.25) -> Html:
    """A heat map: one row per feature, one column per time step, PSI as colour (``values[row][column]``, None: no data)."""
    width = max(_LEFT + _CELL_W * max(1, len(columns)) + 20, _LEFT + 4 * 110)  # room for the legend
    height = _TOP + _CELL_H * max(1, len(rows)) + 40
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="heatmap" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}"><title>{esc(title)}</title>']
    for j, col in enumerate(columns):
        if j % max(1, len(columns) // 12) == 0:  # at most a dozen time labels
            x = _LEFT + j * _CELL_W
            out.append(f'<text x="{x}" y="{_TOP - 8}" transform="rotate(-30 {x} {_TOP - 8})">{esc(col)}</text>')
    for i, name in enumerate(rows):
        y = _TOP + i * _CELL_H
        out.append(f'<text x="{_LEFT - 6}" y="{y + 13}" text-anchor="end">{esc(name)}</text>')
        for j, col in enumerate(columns):
            v = values[i][j]
            tip = f"{name} at {col}: " + ("no data" if v is None else f"PSI {v:.3f}")
            out.append(f'<rect class="cell" x="{_LEFT + j * _CELL_W}" y="{y}" width="{_CELL_W - 1}" height="{_CELL_H - 1}" '
                       f'fill="{_colour(v, warn, alert)}"><title>{esc(tip)}</title></rect>')
    legend_y = _TOP + _CELL_H * max(1, len(rows)) + 22
    for k, (label, v) in enumerate((("ok", 0.0), (f"warn ≥ {warn:g}", warn), (f"alert ≥ {alert:g}", alert), ("no data", None))):
        x = _LEFT + k * 110
        out.append(f'<rect x="{x}" y="{legend_y - 11}" width="14" height="14" fill="{_colour(v, warn, alert)}" stroke="#999"/>'
                   f'<text x="{x + 18}" y="{legend_y}">{esc(label)}</text>')
    out.append("</svg>")
    return Html("".join(out))


def lines(x_labels: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]], *, title: str, unit: str = "") -> Html:
    """A line plot of a few series over the same steps (None: a gap), with the axis' maximum and the series named."""
    w, h, left, top, bottom = 640, 220, 84, 20, 40
    n = max(1, len(x_labels))
    top_value = max([v for _, vs in series for v in vs if v is not None and math.isfinite(v)] or [1.0]) or 1.0
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="lines" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
           f'aria-label="{esc(title)}"><title>{esc(title)}</title>',
           f'<line x1="{left}" y1="{h - bottom}" x2="{w - 10}" y2="{h - bottom}" stroke="#999"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" stroke="#999"/>',
           f'<text x="{left - 4}" y="{top + 8}" text-anchor="end">{esc(f"{top_value:.3g}{unit}")}</text>',
           f'<text x="{left - 4}" y="{h - bottom}" text-anchor="end">0</text>']
    step = (w - 10 - left) / max(1, n - 1)
    for j, label in enumerate(x_labels):
        if j % max(1, n // 8) == 0:
            out.append(f'<text x="{left + j * step:.1f}" y="{h - bottom + 16}" text-anchor="middle">{esc(label)}</text>')
    for k, (name, values) in enumerate(series):
        colour = _PALETTE[k % len(_PALETTE)]
        points = [(left + j * step, h - bottom - (v / top_value) * (h - top - bottom)) for j, v in enumerate(values)
                  if v is not None and math.isfinite(v)]
        if len(points) > 1:
            out.append(f'<polyline class="series" fill="none" stroke="{colour}" stroke-width="2" '
                       f'points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in points)}"/>')
        for x, y in points:
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colour}"/>')
        out.append(f'<text x="{left + 10 + k * 150}" y="{h - 6}" fill="{colour}">■ {esc(name)}</text>')
    out.append("</svg>")
    return Html("".join(out))
