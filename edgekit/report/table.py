"""The terminal rendering (rich): the comparison table, the worst int8 layers, gates and notes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgekit.report import fmt
from edgekit.report.origin import origin_line

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["float_layers_line", "render_search", "render_table"]

#: worst layers shown per int8 artifact in the terminal (report.html and report.json have more)
LAYERS_SHOWN = 5


def render_table(report: dict[str, Any], console: Console, *, layers: int = LAYERS_SHOWN) -> None:
    from rich.table import Table

    metric = report["quality_metric"]
    rt = report.get("runtime") or {}
    versions = ", ".join(f"{k} {v}" for k, v in (rt.get("versions") or {}).items())
    threads = report.get("threads", 1)
    title = (f"{report['model']}{' ' + report['version'] if report.get('version') else ''}  "
             f"(latency: batch 1, {threads} thread{'s' if threads != 1 else ''}, this CPU; {versions})")
    t = Table(title=title, title_justify="left")
    widest = max(len(r["file"]) for r in [report["baseline"]] + report["rows"])
    for header, key in fmt.COLUMNS:
        t.add_column(fmt.quality_header(metric) if key == "QUALITY" else header,
                     justify="left" if key in ("file", "format", "precision") else "right",
                     no_wrap=True, overflow="fold", min_width=widest if key == "file" else None)
    for row in [report["baseline"]] + report["rows"]:
        cells = []
        for _, key in fmt.COLUMNS:
            text = fmt.cell(row, key, metric)
            if (key == "latency_ratio" and fmt.slower(row)) or (key == "size_ratio" and (row.get(key) or 0) > 1):
                text = f"[bold red]{text}[/bold red]"
            cells.append(text)
        t.add_row(*cells, style="bold" if row["role"] == "baseline" else None)
    console.print(t)
    slow = [r["file"] for r in report["rows"] if fmt.slower(r)]
    if slow:
        console.print(f"[red]slower than {report['baseline']['file']} on this CPU:[/red] {', '.join(slow)}", soft_wrap=True)
    bigger = [r["file"] for r in report["rows"] if (r.get("size_ratio") or 0) > 1]
    if bigger:
        console.print(f"[red]larger than {report['baseline']['file']}:[/red] {', '.join(bigger)}", soft_wrap=True)
    if report.get("origin"):
        console.print(origin_line(report["origin"]), soft_wrap=True, highlight=False)
    _layers(report, console, layers)
    _gates(report, console)
    for n in report.get("notes") or []:
        console.print(f"note: {n}", style="dim", soft_wrap=True, highlight=False)


def _layers(report: dict[str, Any], console: Console, top: int) -> None:
    if top <= 0:
        return
    for file, block in (report.get("layers") or {}).items():
        worst = [e for e in block["layers"][:top] if e["added_rel_error"] > 0]
        if not worst:
            continue
        items = ", ".join(f"{e['node']} (+{100 * e['added_rel_error']:.2f}%)" for e in worst)
        console.print(f"{file}: layers adding the most int8 error: {items}. "
                      f"To keep one in float: --exclude {worst[0]['node']!r}", soft_wrap=True, highlight=False)


def _gates(report: dict[str, Any], console: Console) -> None:
    g = report.get("gates")
    if not g:
        return
    missed = [r for r in g["results"] if not r["ok"]]
    if not missed:
        limits = ", ".join(f"{k} {fmt.size(int(v)) if k == 'max_size' else v}" for k, v in g["limits"].items())
        console.print(f"[green]gates passed[/green] ({limits})", soft_wrap=True)
        return
    for r in missed:
        value = fmt.DASH if r["value"] is None else (fmt.size(int(r["value"])) if r["gate"] == "max_size" else f"{r['value']:.4g}")
        limit = fmt.size(int(r["limit"])) if r["gate"] == "max_size" else f"{r['limit']:g}"
        console.print(f"[bold red]gate missed[/bold red]: {r['file']} {r['gate']} {value} > {limit}", soft_wrap=True)


def render_search(report: dict[str, Any], console: Console) -> None:
    """The int8 search lines of a compress report: what was chosen and why, every candidate's numbers (.onnx/.ort, then .tflite)."""
    from edgekit.report.tflite import tflite_lines

    for s in report.get("steps") or []:
        search = (s.get("result") or {}).get("search")
        if not search:
            continue
        objective = f" ({search['objective']})" if search.get("objective") else ""
        console.print(f"int8{objective}: chose [bold]{search['chosen']}[/bold] — {search['why']}", soft_wrap=True)
        if search.get("chosen_ort") and search["chosen_ort"] != search["chosen"]:
            console.print(f"      .ort: chose [bold]{search['chosen_ort']}[/bold] — {search['why_ort']}", soft_wrap=True)
        by_name = {c["name"]: c for c in search["candidates"]}
        for name in dict.fromkeys(n for n in (search.get("chosen"), search.get("chosen_ort")) if n):
            line = float_layers_line(by_name.get(name) or {})
            if line:
                console.print(f"      {name}: {line}", style="dim", soft_wrap=True)
        with_ort = any(c.get("ort_latency_ratio") is not None for c in search["candidates"])
        tried = ", ".join(_candidate(c) for c in search["candidates"])
        what = "latency × fp32 .onnx/.ort" if with_ort else "latency × fp32"
        console.print(f"      candidates ({what} / accuracy drop): {tried}", style="dim", soft_wrap=True)
    tflite_lines(report, console)


def float_layers_line(c: dict[str, Any]) -> str:
    """``int8 on 41 layers; 51 float: 30 slower in int8, 21 for their borders (e.g. ...)`` for a mixed candidate, else ""."""
    floats = c.get("float_layers") or []
    if not floats:
        return ""
    reasons: dict[str, list[str]] = {}
    for f in floats:
        key = ("slower in int8" if f["why"].startswith("slower") else "their float/int8 borders" if "borders" in f["why"]
               else "too much error" if f["why"].startswith("too much") else f["why"])
        reasons.setdefault(key, []).append(f["layer"])
    parts = ", ".join(f"{len(v)} {k}" for k, v in sorted(reasons.items(), key=lambda kv: -len(kv[1])))
    return f"{len(floats)} layers float ({parts}; each named with its measured µs in report.json)"


def _candidate(c: dict[str, Any]) -> str:
    if c["status"] != "ok":
        return f"{c['name']} ({c['status']})"
    ort = f"/{c['ort_latency_ratio']:.2f}x" if c.get("ort_latency_ratio") is not None else ""
    return f"{c['name']} {c['latency_ratio']:.2f}x{ort}/{c['quality']['drop_pts']:+.2f}pt"
