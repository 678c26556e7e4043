"""HTTP/1.1 on the wire: request heads parsed, response heads written. The server's only protocol text.

Deliberately small: the agent reads requests with a ``Content-Length`` (no chunked uploads), answers
with one write (head and body together), keeps connections alive, and refuses anything ambiguous
(two different ``Content-Length`` values, folded header lines, control characters) with a 400: a
request a proxy could read differently is not served.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus

__all__ = ["MAX_HEADERS", "HeadError", "RequestHead", "continue_line", "parse_head", "response_head"]

#: header lines per request (a browser sends ~15, curl 4)
MAX_HEADERS = 100


class HeadError(Exception):
    """A request head that cannot be served: ``status`` is the answer (400, 411, 431, 505)."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


@dataclass(slots=True)
class RequestHead:
    """A parsed request line and headers (names lower-cased; a repeated header keeps its last value)."""

    method: str
    target: str
    path: str  # the target's path, without the query and without a trailing "/"
    query: str
    headers: dict[str, str]
    keep_alive: bool
    content_length: int | None
    expect_continue: bool


_REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) (\S+) (HTTP/\d\.\d)\r?")
_HEADER = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*(.*?)[ \t]*\r?")
_CONTROL = re.compile(rb"[\x00-\x08\x0b-\x0c\x0e-\x1f\x7f]")  # what may not appear in a head (tab, CR and LF aside)


def parse_head(data: bytes) -> RequestHead:
    """The head of one request: ``data`` runs from the request line up to (not including) the blank line."""
    lines = data.split(b"\n")
    m = _REQUEST_LINE.fullmatch(lines[0])
    if m is None:
        raise HeadError(400, "malformed", f"malformed request line {lines[0][:80]!r}; expected 'METHOD /path HTTP/1.1'")
    method, target, version = m.group(1).decode(), m.group(2).decode("latin-1"), m.group(3).decode()
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HeadError(505, "malformed", f"HTTP version {version!r} is not supported; use HTTP/1.1")
    if len(lines) - 1 > MAX_HEADERS:
        raise HeadError(431, "header_too_large", f"{len(lines) - 1} header lines; at most {MAX_HEADERS}")
    if _CONTROL.search(data):
        raise HeadError(400, "malformed", "the request head holds control characters")
    headers: dict[str, str] = {}
    lengths: set[str] = set()
    for line in lines[1:]:
        h = _HEADER.fullmatch(line)
        if h is None:
            raise HeadError(400, "malformed", f"malformed header line {line[:80]!r}; expected 'Name: value' (no folded lines)")
        key, text = h.group(1).decode().lower(), h.group(2).decode("latin-1")
        headers[key] = text
        if key == "content-length":
            lengths.add(text)
    path, _, query = target.partition("?")
    return RequestHead(method, target, path.rstrip("/") or "/", query, headers, _keep_alive(version, headers),
                       _content_length(lengths, headers), headers.get("expect", "").lower() == "100-continue")


def _keep_alive(version: str, headers: dict[str, str]) -> bool:
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    return "keep-alive" in tokens if version == "HTTP/1.0" else "close" not in tokens


def _content_length(lengths: set[str], headers: dict[str, str]) -> int | None:
    if "transfer-encoding" in headers:  # chunked uploads are refused: a body's size must be known before it is read
        raise HeadError(411, "length_required", "chunked request bodies are not supported; send Content-Length")
    if not lengths:
        return None
    if len(lengths) > 1:
        raise HeadError(400, "malformed", f"conflicting Content-Length headers {sorted(lengths)}; send one")
    (text,) = lengths
    if not text.isdigit() or not text.isascii() or len(text) > 15:
        raise HeadError(400, "malformed", f"Content-Length {text!r} is not a byte count")
    return int(text)


_date_cache: tuple[int, str] = (0, "")


def _date() -> str:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:  # formatted once a second, not per response
        _date_cache = (now, formatdate(now, usegmt=True))
    return _date_cache[1]


_REASONS = {s.value: s.phrase for s in HTTPStatus}


def response_head(status: int, content_type: str, length: int, *, request_id: str, close: bool,
                  extra: dict[str, str] | None = None) -> bytes:
    """Status line and headers of a response whose body is ``length`` bytes (ends with the blank line)."""
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, '')}", "Server: edgekit-agent", f"Date: {_date()}",
             f"Content-Length: {length}", f"X-Request-Id: {request_id}"]
    if content_type:  # an empty answer (the V2 health routes) has no type
        lines.insert(3, f"Content-Type: {content_type}")
    if extra:
        lines += [f"{k}: {v}" for k, v in extra.items()]
    if close:
        lines.append("Connection: close")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1")


def continue_line() -> bytes:
    """The interim answer to ``Expect: 100-continue`` (curl sends it before bodies over 1 MB)."""
    return b"HTTP/1.1 100 Continue\r\n\r\n"
