"""The HTML rendering: one self-contained page (inline CSS and SVG; no scripts, fonts or CDNs; works offline).

Sections, each a ``<section id=...>``: ``summary``, ``comparison``, ``plots``, ``layers`` (int8
artifacts), ``gates`` (recipes with gates), ``steps`` (compress), ``recipe``, ``notes``.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from html import escape
from typing import Any

from edgekit.report import fmt
from edgekit.report.origin import origin_html
from edgekit.report.plots import latency_svg, layers_svg, pareto_svg
from edgekit.report.tflite import tflite_html

__all__ = ["render_html"]

#: layers listed per int8 artifact
LAYERS_SHOWN = 15

_CSS = """
:root { --fg:#111827; --muted:#6b7280; --line:#e5e7eb; --good:#15803d; --bad:#b91c1c; --bg2:#f9fafb; }
* { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: var(--fg);
       margin: 0 auto; max-width: 1200px; padding: 24px; line-height: 1.45; }
h1 { font-size: 1.5rem; margin: 0 0 4px; } h2 { font-size: 1.15rem; margin: 28px 0 8px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
.meta { color: var(--muted); font-size: .9rem; }
table { border-collapse: collapse; font-size: .85rem; width: 100%; }
th, td { padding: 4px 8px; border-bottom: 1px solid var(--line); text-align: right; white-space: nowrap; }
th:first-child, td:first-child, td.text, th.text { text-align: left; }
tr:nth-child(even) td { background: var(--bg2); }
tr.baseline td { font-weight: 600; }
td.good { color: var(--good); } td.bad { color: var(--bad); font-weight: 600; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; min-width: 240px; }
.card b { display: block; margin-bottom: 4px; }
.pass { color: var(--good); font-weight: 600; } .fail { color: var(--bad); font-weight: 600; }
.plots { display: flex; flex-wrap: wrap; gap: 16px; } svg.plot { max-width: 100%; height: auto; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .82rem; }
pre { background: var(--bg2); padding: 10px; overflow-x: auto; border-radius: 6px; }
.scroll { overflow-x: auto; }
"""


def render_html(report: dict[str, Any]) -> str:
    """The report as one HTML page; every value shown comes from ``report`` (the JSON's content)."""
    title = f"edgekit report: {report['model']}" + (f" {report['version']}" if report.get("version") else "")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<header><h1>{escape(title)}</h1><p class=\"meta\">{_meta(report)}</p></header>",
        _summary(report),
        _comparison(report),
        origin_html(report),
        _plots(report),
        _layers(report),
        _gates(report),
        _steps(report),
        tflite_html(report),
        _recipe(report),
        _notes(report),
        f'<footer class="meta"><p>schema {escape(report["schema"])} v{report["schema_version"]}: the same data as report.json '
        f"(<code>edgekit report --json</code>). Generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.</p></footer>",
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p)


def _meta(r: dict[str, Any]) -> str:
    rt = r.get("runtime") or {}
    versions = ", ".join(f"{k} {v}" for k, v in (rt.get("versions") or {}).items())
    data = r.get("data") or {}
    data_txt = data.get("description") or data.get("file") or "—"
    if data.get("samples"):
        data_txt += f" ({data['samples']} samples{', labelled' if data.get('labelled') else ''}{', generated' if data.get('generated') else ''})"
    threads = r.get("threads", 1)
    return (f"Data: {escape(str(data_txt))}. Latency: batch 1, {threads} thread{'s' if threads != 1 else ''}, "
            f"every model interleaved on the same CPU ({escape(str(rt.get('cpu') or 'unknown'))}; {escape(versions)}). "
            f"Quality: {escape(r['quality_metric'])} against the baseline {escape(r['baseline']['file'])}.")


def _summary(r: dict[str, Any]) -> str:
    metric = r["quality_metric"]
    base = r["baseline"]
    cards = []
    for row in r["rows"]:
        bigger = row.get("size_ratio") is not None and row["size_ratio"] > 1
        lines = [f'<span class="{"bad" if bigger else ""}">{fmt.cell(row, "size_ratio", metric)}× size ({fmt.size(row["size_bytes"])})'
                 f'{" — larger than the baseline" if bigger else ""}</span>, {fmt.cell(row, "gzip_ratio", metric)}× gzipped']
        if row.get("latency_ratio") is not None:
            cls = "bad" if fmt.slower(row) else ("good" if row["latency_ratio"] < 1 / fmt.SLOWER else "")
            warn = " — slower than the baseline" if fmt.slower(row) else ""
            lines.append(f'<span class="{cls}">{row["latency_ratio"]:.2f}× latency{warn}</span>')
        q, bq = row.get(metric), base.get(metric)
        if q is not None:
            delta = f" ({q - bq:+.2f} pt)" if bq is not None and metric != "cosine" else ""
            lines.append(f"{fmt.quality_header(metric)} {fmt.cell(row, 'QUALITY', metric)}{delta}")
        cards.append(f'<div class="card"><b>{escape(row["file"])}</b>{escape(row["precision"] or "")} {escape(row["format"])}<br>'
                     + "<br>".join(lines) + "</div>")
    if not cards:
        return ""
    return f'<section id="summary"><h2>Summary</h2><div class="cards">{"".join(cards)}</div></section>'


def _comparison(r: dict[str, Any]) -> str:
    metric = r["quality_metric"]
    heads = "".join(f'<th class="{"text" if k in ("file", "format", "precision") else ""}">'
                    f"{escape(fmt.quality_header(metric) if k == 'QUALITY' else h)}</th>" for h, k in fmt.COLUMNS)
    body = []
    for row in [r["baseline"]] + r["rows"]:
        cells = []
        for _, k in fmt.COLUMNS:
            cls = "text" if k in ("file", "format", "precision") else ""
            if (k == "latency_ratio" and fmt.slower(row)) or (k == "size_ratio" and (row.get(k) or 0) > 1):
                cls = "bad"
            elif k in ("size_ratio", "latency_ratio") and row.get(k) is not None and row["role"] != "baseline" and row[k] < 0.95:
                cls = "good"
            cells.append(f'<td class="{cls}">{escape(fmt.cell(row, k, metric))}</td>')
        body.append(f'<tr class="{row["role"]}">{"".join(cells)}</tr>')
    return (f'<section id="comparison"><h2>Comparison</h2><div class="scroll"><table><thead><tr>{heads}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>'
            '<p class="meta">Ratios are to the first row (the baseline). Sizes in decimal kB/MB; "gzip" is the size after gzip -9, '
            "what a download costs. Errors are against the baseline's outputs on the same inputs.</p></section>")


def _plots(r: dict[str, Any]) -> str:
    figs = [f for f in (pareto_svg(r), latency_svg(r)) if f]
    if not figs:
        return ""
    return f'<section id="plots"><h2>Plots</h2><div class="plots">{"".join(figs)}</div></section>'


def _layers(r: dict[str, Any]) -> str:
    blocks = r.get("layers") or {}
    if not blocks:
        return ""
    out = ['<section id="layers"><h2>Per-layer int8 error</h2>',
           '<p>Each layer\'s output compared with the float model on the same inputs, worst first by the error the layer '
           "<em>adds</em> to what its inputs already carried. To keep a layer in float, re-run with "
           "<code>edgekit compress --int8 --exclude NODE</code> (repeatable).</p>"]
    for i, (file, block) in enumerate(blocks.items()):
        rows = block["layers"][:LAYERS_SHOWN]
        trs = "".join(
            f'<tr><td class="text"><code>{escape(e["node"])}</code></td><td class="text">{escape(e["op_type"])}</td>'
            f'<td>{_num(e["sqnr_db"], ".1f", "exact")}</td>'
            f'<td>{100 * e["rel_error"]:.2f}%</td><td>{100 * e["added_rel_error"]:.2f}%</td><td>{e["max_abs_error"]:.3g}</td></tr>'
            for e in rows
        )
        gen = " (generated inputs: indicative only)" if block.get("generated_data") else ""
        out.append(f"<h3>{escape(file)} vs {escape(block['reference'])}, {block['samples']} samples{gen}</h3>")
        if block.get("note"):
            out.append(f'<p class="meta">{escape(block["note"])}</p>')
        plot = layers_svg(file, block, top=LAYERS_SHOWN, index=i)
        if plot:
            out.append(plot)
        out.append('<div class="scroll"><table><thead><tr><th class="text">node (--exclude)</th><th class="text">op</th>'
                   "<th>SQNR dB</th><th>error</th><th>added</th><th>max abs err</th></tr></thead>"
                   f"<tbody>{trs}</tbody></table></div>")
        more = len(block["layers"]) - len(rows)
        if more > 0:
            out.append(f'<p class="meta">{more} more layer(s) in report.json.</p>')
    out.append("</section>")
    return "".join(out)


def _gates(r: dict[str, Any]) -> str:
    g = r.get("gates")
    if not g:
        return ""
    verdict = '<span class="pass">all gates passed</span>' if g["passed"] else '<span class="fail">gates missed</span>'
    trs = "".join(
        f'<tr><td class="text">{escape(x["gate"])}</td><td class="text">{escape(x["file"])}</td>'
        f'<td>{escape(_gate_value(x["gate"], x["value"]))}</td><td>{escape(_gate_value(x["gate"], x["limit"]))}</td>'
        f'<td class="{"pass" if x["ok"] else "fail"}">{"pass" if x["ok"] else "FAIL"}</td></tr>'
        for x in g["results"]
    )
    return (f'<section id="gates"><h2>Gates</h2><p>{verdict}</p><table><thead><tr><th class="text">gate</th><th class="text">file</th>'
            f"<th>value</th><th>limit</th><th>result</th></tr></thead><tbody>{trs}</tbody></table></section>")


def _gate_value(gate: str, v: Any) -> str:
    if v is None:
        return fmt.DASH
    if gate == "max_size":
        return fmt.size(int(v))
    return f"{v:.4g}"


def _steps(r: dict[str, Any]) -> str:
    steps = r.get("steps") or []
    if not steps:
        return ""
    out = ['<section id="steps"><h2>Compression steps</h2>']
    for i, s in enumerate(steps, 1):
        params = ", ".join(f"{k}={json.dumps(v)}" for k, v in (s.get("params") or {}).items())
        out.append(f"<h3>{i}. {escape(s['name'])}</h3><p><code>{escape(params)}</code></p>")
        search = (s.get("result") or {}).get("search")
        if search:
            out.append(_search(search))
        elif s.get("result"):
            trs = "".join(f'<tr><td class="text">{escape(str(k))}</td><td class="text">{escape(_result_text(v))}</td></tr>'
                          for k, v in s["result"].items())
            out.append(f"<table>{trs}</table>")
    out.append("</section>")
    return "".join(out)


def _result_text(v: Any, limit: int = 400) -> str:
    """One line for a step's result value: before → after for changes, k=v for small records."""
    def num(x: Any) -> str:
        return f"{x:,}" if isinstance(x, int) and not isinstance(x, bool) else str(x)

    if isinstance(v, dict) and "before" in v and "after" in v and not isinstance(v["before"], dict):
        text = f"{num(v['before'])} → {num(v['after'])}" + (f" ({v['ratio']}×)" if "ratio" in v else "")
        extra = {k: x for k, x in v.items() if k not in ("before", "after", "ratio")}
        text += "".join(f", {k} {num(x)}" for k, x in extra.items())
    elif isinstance(v, dict) and v and all(isinstance(x, dict) and "before" in x for x in v.values()):
        text = ", ".join(f"{k} {num(x['before'])}→{num(x['after'])}" for k, x in v.items())
    elif isinstance(v, dict):
        text = ", ".join(f"{k}={num(x)}" if not isinstance(x, (dict, list)) else f"{k}: {len(x)} entries (report.json)"
                         for k, x in v.items())
    elif isinstance(v, list):
        text = ", ".join(str(x) for x in v)
    else:
        text = num(v)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _search(search: dict[str, Any]) -> str:
    trs = []
    for c in search["candidates"]:
        chosen = c["name"] == search.get("chosen")
        if c["status"] != "ok":
            trs.append(f'<tr><td class="text">{escape(c["name"])}</td><td class="text">{escape(c["status"])}</td>'
                       f'<td colspan="4" class="text">{escape(c.get("reason", ""))}</td></tr>')
            continue
        q = c.get("quality") or {}
        lat = c.get("latency_ratio")
        ort = c.get("ort_latency_ratio")
        trs.append(
            f'<tr class="{"baseline" if chosen else ""}"><td class="text">{escape(c["name"])}{" ✔ chosen" if chosen else ""}</td>'
            f'<td class="text">{"accepted" if c.get("accepted") else escape(c.get("reason") or "rejected")}</td>'
            f'<td>{fmt.size(c.get("size_bytes"))}</td>'
            f'<td class="{"bad" if lat and lat > fmt.SLOWER else ""}">{_num(lat, ".2f")}{"×" if lat is not None else ""}</td>'
            f'<td class="{"bad" if ort and ort > fmt.SLOWER else ""}">{_num(ort, ".2f")}{"×" if ort is not None else ""}</td>'
            f'<td>{_num(q.get("drop_pts"), "+.2f")}</td>'
            f'<td>{_num(c.get("quantized_share"), ".0%")}</td></tr>'
        )
    chose = f"<p>int8 ({escape(str(search.get('objective', 'balanced')))}) chose <b>{escape(str(search.get('chosen')))}</b>: " \
            f"{escape(search.get('why', ''))}</p>"
    if search.get("chosen_ort") and search["chosen_ort"] != search.get("chosen"):
        chose += f"<p>The .ort: <b>{escape(str(search['chosen_ort']))}</b>: {escape(search.get('why_ort', ''))}</p>"
    return (chose + '<div class="scroll"><table><thead><tr><th class="text">candidate</th><th class="text">verdict</th><th>size</th>'
            "<th>latency × fp32</th><th>.ort latency × fp32</th><th>drop (pts)</th><th>int8 weights</th></tr></thead>"
            f'<tbody>{"".join(trs)}</tbody></table></div>' + _float_layers(search) + _splits(search))


def _float_layers(search: dict[str, Any]) -> str:
    """The chosen mixed candidates' float layers, each with why and its measured float and int8 cost."""
    by_name = {c["name"]: c for c in search["candidates"]}
    out = []
    for name in dict.fromkeys(n for n in (search.get("chosen"), search.get("chosen_ort")) if n):
        floats = (by_name.get(name) or {}).get("float_layers") or []
        if not floats:
            continue
        trs = "".join(f'<tr><td class="text">{escape(f["layer"])}</td><td class="text">{escape(f["op"])}</td>'
                      f'<td>{_num(f.get("float_us"), ".0f")}</td><td>{_num(f.get("int8_us"), ".0f")}</td>'
                      f'<td class="text">{escape(f["why"])}</td></tr>' for f in floats)
        out.append(f"<p>Layers {escape(name)} keeps in float ({len(floats)}), and why (µs per run, from onnxruntime's profiler):</p>"
                   '<div class="scroll"><table><thead><tr><th class="text">layer</th><th class="text">op</th><th>float µs</th>'
                   f'<th>int8 µs</th><th class="text">why</th></tr></thead><tbody>{trs}</tbody></table></div>')
    return "".join(out)


def _splits(search: dict[str, Any]) -> str:
    """The float/int8 splits the per-layer search priced, per form: the measured alternatives."""
    rows = []
    for form, found in (search.get("mixed") or {}).items():
        for sp in (found.get("splits", []) if isinstance(found, dict) else []):  # {"failed": "..."} when the search could not run
            rows.append(f'<tr><td class="text">.{escape(form)}</td><td class="text">{escape(sp["name"])}</td><td>{sp["int8_layers"]}</td>'
                        f'<td>{_num(sp.get("predicted_ratio"), ".2f")}×</td></tr>')
    if not rows:
        return ""
    return ("<p>Float/int8 splits priced by the per-layer costs (kernel time × the float model's, before the end-to-end check):</p>"
            '<div class="scroll"><table><thead><tr><th class="text">form</th><th class="text">split</th><th>int8 layers</th>'
            f'<th>predicted × fp32</th></tr></thead><tbody>{"".join(rows)}</tbody></table></div>')


def _num(v: float | None, spec: str, none: str = fmt.DASH) -> str:
    return none if v is None else format(v, spec)


def _recipe(r: dict[str, Any]) -> str:
    recipe = r.get("recipe")
    if not recipe:
        return ""
    import yaml

    text = yaml.safe_dump(recipe, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return (f'<section id="recipe"><h2>Recipe</h2><p>Resolved recipe <b>{escape(str(recipe.get("name")))}</b>: save it as a '
            f".yaml file and pass it to <code>edgekit compress --recipe</code> to reproduce these artifacts.</p>"
            f"<pre>{escape(text)}</pre></section>")


def _notes(r: dict[str, Any]) -> str:
    notes = list(r.get("notes") or [])
    if r.get("accuracy_bound_failed"):
        notes.insert(0, f"accuracy bound not met: {r['accuracy_bound_failed']}")
    if not notes:
        return ""
    return '<section id="notes"><h2>Notes</h2><ul>' + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul></section>"
