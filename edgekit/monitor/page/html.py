"""HTML pieces of the fleet page: every value escaped on the way in, one inline style sheet, no script.

Everything a device reports (ids, groups, versions, reasons, details) is hostile input: it only
reaches the page through :func:`esc` (text and attribute values) or :func:`href` (URLs), never
concatenated raw. :class:`Html` marks markup built here, so a table cell that already is markup is
not escaped twice and a plain string always is.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import quote, urlencode

__all__ = ["Html", "ago", "esc", "href", "layout", "link", "pager", "status", "table", "when"]

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:.6em 1.2em;display:flex;gap:1.5em;align-items:baseline}
header a{color:#cfe0ff;text-decoration:none}header b{font-size:1.1em}
main{padding:1em 1.2em}h1{font-size:1.3em;margin:.2em 0 .6em}h2{font-size:1.1em;margin:1.2em 0 .4em}
table{border-collapse:collapse;background:#fff;font-size:13px}th,td{border:1px solid #dde1e7;padding:.25em .5em;text-align:left;
vertical-align:top}th{background:#eef1f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#1a7f37}.warn{color:#9a6700}.alert,.refused,.mismatch,.FAILED,.aborted{color:#cf222e;font-weight:600}.drift{color:#9a6700}
form{margin:.4em 0 .8em;display:flex;gap:.6em;flex-wrap:wrap;align-items:end}label{display:flex;flex-direction:column;font-size:12px}
.pager{margin:.6em 0}.pager a{margin-right:1em}.muted{color:#6e7781}.cards{display:flex;gap:1em;flex-wrap:wrap;margin-bottom:1em}
.card{background:#fff;border:1px solid #dde1e7;padding:.5em .8em;min-width:8em}.card b{display:block;font-size:1.4em}
svg{background:#fff;border:1px solid #dde1e7}svg text{font:11px system-ui,sans-serif;fill:#1d2330}
"""
_NAV = (("/", "Devices"), ("/rollouts", "Rollouts"), ("/drift", "Drift"), ("/alerts", "Alerts"))


class Html(str):
    """Markup built by this package (safe to insert as is)."""


def esc(value: object) -> Html:
    """``value`` as HTML text or attribute value (None: an em dash)."""
    if isinstance(value, Html):
        return value
    return Html("—" if value is None else html.escape(str(value), quote=True))


def href(path: str, params: Mapping[str, object] | None = None, *, segment: str | None = None) -> Html:
    """A URL to ``path`` (plus ``segment``, percent-encoded whole) with query ``params`` (None values left out), escaped."""
    url = path + (quote(segment, safe="") if segment is not None else "")
    q = {k: str(v) for k, v in (params or {}).items() if v is not None and v != ""}
    return esc(url + ("?" + urlencode(q) if q else ""))


def link(text: object, path: str, params: Mapping[str, object] | None = None, *, segment: str | None = None) -> Html:
    return Html(f'<a href="{href(path, params, segment=segment)}">{esc(text)}</a>')


def status(value: object) -> Html:
    """A level or state, coloured by its class (the class name is the escaped value itself)."""
    if value is None:
        return esc(None)
    v = esc(value)
    return Html(f'<span class="{v}">{v}</span>')


def when(ts: float | None) -> Html:
    """A UTC time (``2026-12-06 20:31:05Z``)."""
    if not ts:
        return esc(None)
    return esc(time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts)))


def ago(ts: float | None, now: float | None = None) -> Html:
    if not ts:
        return esc(None)
    s = max(0.0, (now or time.time()) - ts)
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return esc(f"{s / n:.1f} {unit} ago")
    return esc(f"{s:.0f} s ago")


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], *, numeric: Iterable[int] = (), empty: str = "nothing yet",
          cls: str = "") -> Html:
    """A table; cells are escaped unless they are :class:`Html`; columns in ``numeric`` right-aligned."""
    nums = set(numeric)
    body = []
    for row in rows:
        cells = "".join(f'<td{" class=num" if i in nums else ""}>{esc(c)}</td>' for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    if not body:
        return Html(f'<p class="muted">{esc(empty)}</p>')
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    return Html(f'<table{f" class={esc(cls)}" if cls else ""}><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')


def pager(path: str, params: Mapping[str, object], *, offset: int, limit: int, shown: int, total: int) -> Html:
    """"devices 51-100 of 10000" with previous and next links (the filters kept)."""
    parts = [f"{esc(path.strip('/') or 'devices')} {offset + 1 if shown else 0}-{offset + shown} of {total}"]
    if offset > 0:
        parts.append(str(link("« previous", path, {**params, "offset": max(0, offset - limit) or None})))
    if offset + shown < total:
        parts.append(str(link("next »", path, {**params, "offset": offset + limit})))
    return Html(f'<div class="pager">{" ".join(parts)}</div>')


def layout(title: str, body: str, *, now: float | None = None) -> bytes:
    """A whole page: the navigation, ``title`` and ``body`` (markup), UTF-8."""
    nav = "".join(f'<a href="{href(p)}">{esc(t)}</a>' for p, t in _NAV)
    stamp = when(now or time.time())
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)} · edgekit fleet</title>'
            f'<meta name="viewport" content="width=device-width"><style>{_STYLE}</style></head>'
            f'<body><header><b>edgekit fleet</b>{nav}<span class="muted">read-only · {stamp}</span></header>'
            f"<main><h1>{esc(title)}</h1>{body}</main></body></html>").encode()
