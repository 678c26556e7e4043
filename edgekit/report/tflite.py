"""The int8 ``.tflite``'s search in the report: which ops stayed float and why, and every variant measured.

The manifest keeps the whole record (``artifacts[].extra.tflite.int8_search``, written by
:mod:`edgekit.export.tflite_search`); the report carries the part a reader acts on, under the
top-level key ``tflite_int8`` (null when the run wrote no searched int8 .tflite).
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING, Any

from edgekit.report import fmt

if TYPE_CHECKING:
    from rich.console import Console

    from edgekit.results import CompressResult

__all__ = ["tflite_block", "tflite_html", "tflite_lines"]

#: float ops named in the terminal (report.json and report.html list them all)
SHOWN = 4


def tflite_block(result: CompressResult) -> dict[str, Any] | None:
    """``tflite_int8`` of a compress report, from the manifest's record of the searched .tflite."""
    for a in result.artifacts:
        search = (a.exported.extra.get("tflite") or {}).get("int8_search")
        if search:
            keep = ("objective", "chosen", "why", "note", "precision", "clock", "float_tflite", "float_layers", "candidates", "seconds")
            return {"file": a.file, **{k: search.get(k) for k in keep}}
    return None


def tflite_lines(report: dict[str, Any], console: Console) -> None:
    """Terminal lines: the choice and why, the float ops and why, the variants' latency and size against the float .tflite."""
    block = report.get("tflite_int8")
    if not block:
        return
    console.print(f"{block['file']}: chose [bold]{block['chosen']}[/bold] — {block['why']}", soft_wrap=True, highlight=False)
    floats = block.get("float_layers") or []
    if floats:
        named = "; ".join(f"{f['op']} ({f['why']})" for f in floats[:SHOWN]) + (f"; {len(floats) - SHOWN} more" if len(floats) > SHOWN else "")
        console.print(f"      float ops: {named}", style="dim", soft_wrap=True, highlight=False)
    tried = ", ".join(_variant(c) for c in block.get("candidates") or [])
    console.print(f"      variants (latency × float .tflite / size × float .tflite): {tried}", style="dim", soft_wrap=True, highlight=False)


def tflite_html(report: dict[str, Any]) -> str:
    """The report.html section: the choice, the float ops with their reasons, the variants."""
    block = report.get("tflite_int8")
    if not block:
        return ""
    rows = []
    for c in block.get("candidates") or []:
        chosen = c["name"] == block["chosen"]
        lat = c.get("latency_ratio")
        verdict = c.get("error") or ("within parity" if c.get("accurate") else "outside parity")
        rows.append(f'<tr class="{"baseline" if chosen else ""}"><td class="text">{escape(c["name"])}{" ✔ chosen" if chosen else ""}</td>'
                    f'<td class="text">{escape(c.get("origin") or "")}</td><td class="text">{escape(verdict)}</td>'
                    f'<td>{_num(c.get("size_ratio"), ".3f")}</td>'
                    f'<td class="{"bad" if lat and lat > 1 else ""}">{_num(lat, ".2f")}{"×" if lat is not None else ""}</td></tr>')
    floats = "".join(f'<tr><td class="text">{escape(f["op"])}</td><td class="text"><code>{escape(f["node"])}</code></td>'
                     f'<td class="text">{escape(f["why"])}</td></tr>' for f in block.get("float_layers") or [])
    base = block.get("float_tflite") or {}
    return (f'<section id="tflite-int8"><h2>int8 .tflite: which ops stay float</h2>'
            f"<p>{escape(block['file'])} (objective {escape(str(block['objective']))}): <b>{escape(block['chosen'])}</b>. "
            f"{escape(block['why'])}</p>" + (f'<p class="bad">{escape(block["note"])}</p>' if block.get("note") else "")
            + f"<p class=\"meta\">every variant timed round-robin with the float .tflite ({fmt.size(base.get('size_bytes'))}, "
            f"p50 {_num(base.get('p50_ms'), '.3f')} ms, {escape(str(block.get('clock')))})</p>"
            '<div class="scroll"><table><thead><tr><th class="text">variant</th><th class="text">tried because</th>'
            '<th class="text">verdict</th><th>size × float</th><th>latency × float</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>'
            + (f'<div class="scroll"><table><thead><tr><th class="text">float op</th><th class="text">node</th><th class="text">why</th>'
               f"</tr></thead><tbody>{floats}</tbody></table></div>" if floats else "<p>every op runs in int8</p>")
            + "</section>")


def _variant(c: dict[str, Any]) -> str:
    if c.get("error"):
        return f"{c['name']} (not built)"
    if c.get("latency_ratio") is None:
        return f"{c['name']} ({'outside parity' if c.get('accurate') is False else 'not timed'})"
    return f"{c['name']} {c['latency_ratio']:.2f}x/{c['size_ratio']:.2f}x"


def _num(v: float | None, spec: str) -> str:
    return fmt.DASH if v is None else format(v, spec)
