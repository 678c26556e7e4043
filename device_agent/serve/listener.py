"""What the HTTP connections share: the limits, the body budget, the worker pools, the open connections.

Used from the server's event loop thread (the pools run the requests); no lock.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import time
from dataclasses import dataclass, fields
from typing import Protocol

from device_agent.contract.errors import ConfigError
from device_agent.serve.budget import ByteBudget
from device_agent.serve.exchange import App, Request, Response

__all__ = ["HttpLimits", "Listener"]

@dataclass(frozen=True)
class HttpLimits:
    """What one agent's HTTP API holds at most, and how long it waits (``[api]`` in agent.toml)."""

    max_body_bytes: int = 16 << 20
    max_connections: int = 512
    max_inflight_bytes: int = 16 << 20
    workers: int = 4
    header_timeout_s: float = 10.0
    request_timeout_s: float = 30.0
    idle_timeout_s: float = 30.0
    budget_wait_s: float = 10.0

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) <= 0:
                raise ConfigError(f"[api] {f.name} must be positive, got {getattr(self, f.name)}", field=f"api.{f.name}")
        if self.max_inflight_bytes < self.max_body_bytes:
            raise ConfigError(f"[api] max_inflight_bytes ({self.max_inflight_bytes:,}) is below max_body_bytes ({self.max_body_bytes:,}): "
                              "one largest request must fit; raise it or lower max_body_bytes", field="api.max_inflight_bytes")


class Evictable(Protocol):
    """What the listener needs of a connection (:class:`device_agent.serve.connection.Connection`)."""

    since: float

    @property
    def evictable(self) -> bool: ...

    def abort(self) -> None: ...


class Listener:
    """The state the connections share: limits, budget, worker pools, the open connections."""

    def __init__(self, app: App, limits: HttpLimits, loop: asyncio.AbstractEventLoop) -> None:
        self.app = app
        self.limits = limits
        self.loop = loop
        self.budget = ByteBudget(limits.max_inflight_bytes)
        self.pool = concurrent.futures.ThreadPoolExecutor(limits.workers, thread_name_prefix="edgekit-http")
        # metadata and health answers never queue behind inference
        self.light_pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="edgekit-http-light")
        self.conns: dict[Evictable, None] = {}
        self.evicted = 0
        self.running = 0  # requests a worker (or the loop itself) is answering
        self.cost_s = math.inf  # running average of how long a request (POST) takes to answer; unknown at first
        self.closing = False

    def admit(self, conn: Evictable) -> bool:
        """Register a new connection; at the limit, close the one idle or stalled the longest (False: none can go)."""
        if len(self.conns) >= self.limits.max_connections:
            victim = min((c for c in self.conns if c.evictable), key=lambda c: c.since, default=None)
            if victim is None:
                return False
            self.conns.pop(victim, None)
            self.evicted += 1
            victim.abort()
        self.conns[conn] = None
        return True

    def timed(self, request: Request) -> Response:
        """``app.handle``, timed into ``cost_s`` (from any thread: a lost update of an average is harmless)."""
        t0 = time.perf_counter()
        try:
            return self.app.handle(request)
        finally:
            dt = time.perf_counter() - t0
            self.cost_s = dt if math.isinf(self.cost_s) else 0.9 * self.cost_s + 0.1 * dt

    def forget(self, conn: Evictable) -> None:
        self.conns.pop(conn, None)
