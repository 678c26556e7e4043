"""What passes between the HTTP connection and the routes: a request, its route, an answer.

Kept apart from both so that the connection (event loop, sockets) and the routes (the agent, the
protocols) depend on these small types and not on each other.
"""

from __future__ import annotations

import itertools
import re
import uuid
from dataclasses import dataclass, field
from typing import Protocol

from device_agent.serve.wire import RequestHead

__all__ = ["REQUEST_ID", "App", "Request", "Response", "RouteMatch", "new_request_id"]

#: a request id a caller may choose: it is echoed in the X-Request-Id header and telemetry
REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")

# random per start + a counter: unique, and far cheaper than uuid4 per request
_PREFIX = uuid.uuid4().hex[:12] + "-h"
_COUNTER = itertools.count(1)


def new_request_id() -> str:
    """An id for an answer that carries no prediction (errors, metadata)."""
    return f"{_PREFIX}{next(_COUNTER):x}"


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """Where a request head leads, decided on the event loop before its body is read.

    ``route``: the route's template (the metrics label; "other" when none matched). ``v2``: errors
    take the Open Inference Protocol's form. ``open``: served without a token. ``heavy``: runs on
    the inference workers (else on the small pool that keeps health answers fast).
    """

    route: str
    v2: bool = False
    open: bool = False
    heavy: bool = False
    params: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True)
class Request:
    """A complete request: its head, its body (read into one buffer), where it goes, who sent it."""

    head: RequestHead
    body: bytearray | bytes | memoryview
    match: RouteMatch
    request_id: str | None  # the caller's X-Request-Id when well-formed
    authorized: bool  # a valid token, or no tokens configured (loopback only)

    @property
    def method(self) -> str:
        return self.head.method

    @property
    def path(self) -> str:
        return self.head.path


@dataclass(slots=True)
class Response:
    """An answer: status, body, content type and extra headers; ``close`` ends the connection after it."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    request_id: str | None = None
    close: bool = False


class App(Protocol):
    """The routes the server serves (:class:`device_agent.serve.routes.Router`)."""

    def match(self, head: RequestHead) -> RouteMatch:
        """The route of a request head (cheap: runs on the event loop)."""
        ...

    def authorized(self, head: RequestHead) -> bool:
        """Whether the head carries a valid token (True when no tokens are configured)."""
        ...

    def handle(self, request: Request) -> Response:
        """The answer (on a worker thread); never raises."""
        ...

    def error(self, match: RouteMatch, status: int, kind: str, message: str, *, request_id: str | None = None) -> Response:
        """An error answer in the route's protocol form (transport errors found by the connection)."""
        ...

    def count(self, method: str, route: str, status: int) -> None:
        """Count an answer in the metrics."""
        ...
