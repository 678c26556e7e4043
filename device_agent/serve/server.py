"""The local HTTP API: one asyncio event loop for the sockets, worker threads for the requests.

Routes (the OpenAPI document at ``GET /openapi.json`` describes exactly these; see
:mod:`device_agent.serve.routes`)::

    POST /v1/predict, /v1/feedback; GET /v1/model, /healthz, /readyz, /metrics, /openapi.json
    Open Inference Protocol V2 (KServe / Triton REST, with the binary tensor data extension):
    GET /v2, /v2/health/live, /v2/health/ready, /v2/models/{name}[/versions/{version}][/ready]
    POST /v2/models/{name}[/versions/{version}]/infer

How it holds up under load and abuse (stdlib only: nothing to install on the device):

- the event loop reads whole requests (no thread per connection), within a deadline for the head
  and one for the whole request; only complete requests reach the ``workers`` threads;
- request bodies are read straight into one buffer each and counted against ``max_inflight_bytes``;
  over it a request waits (its socket paused) up to ``budget_wait_s``, then gets 503 + Retry-After;
- at ``max_connections`` a new connection takes the place of the one idle or stalled the longest,
  so slow clients cannot lock others out, and health probes have their own small pool of threads:
  ``/healthz`` answers while every worker runs inference;
- beyond loopback a bearer token is required (see :mod:`device_agent.serve.auth`); TLS is optional.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import socket
import ssl
import threading
import time

from device_agent.contract.errors import ConfigError
from device_agent.serve.auth import Tokens, is_loopback
from device_agent.serve.connection import Connection
from device_agent.serve.listener import HttpLimits, Listener
from device_agent.serve.predictor import Predictor
from device_agent.serve.routes import ROUTES, Router

__all__ = ["ROUTES", "ApiServer", "HttpLimits", "Listener", "serve"]

log = logging.getLogger("edgekit.agent.http")


class ApiServer:
    """A running HTTP API; ``url`` is where it listens, ``close()`` stops it."""

    def __init__(self, listener: Listener, server: asyncio.Server, thread: threading.Thread, *, tls: bool) -> None:
        self.listener = listener
        self._server = server
        self._thread = thread
        self.tls = tls
        sock = server.sockets[0]
        self._addr = sock.getsockname()

    @property
    def port(self) -> int:
        return int(self._addr[1])

    @property
    def host(self) -> str:
        return str(self._addr[0])

    @property
    def url(self) -> str:
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def close(self, grace_s: float = 5.0) -> None:
        """Stop accepting, let requests in progress finish (up to ``grace_s``), close every connection."""
        lis, loop = self.listener, self.listener.loop
        if loop.is_closed():
            return

        async def stop() -> None:
            lis.closing = True
            self._server.close()
            deadline = time.monotonic() + grace_s
            while any(not c.evictable for c in lis.conns) and time.monotonic() < deadline:  # requests in progress finish
                await asyncio.sleep(0.01)
            for c in list(lis.conns):
                c.abort()
            await asyncio.sleep(0)

        try:
            asyncio.run_coroutine_threadsafe(stop(), loop).result(grace_s + 5)
        except (concurrent.futures.TimeoutError, RuntimeError):
            log.warning("HTTP API: connections did not close within %.0f s", grace_s + 5)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(5)
        lis.pool.shutdown(wait=False, cancel_futures=True)
        lis.light_pool.shutdown(wait=False, cancel_futures=True)


def serve(predictor: Predictor, host: str = "127.0.0.1", port: int = 8470, *, max_body_bytes: int = 16 << 20,
          max_connections: int = 512, tokens: Tokens | None = None, ssl_context: ssl.SSLContext | None = None,
          limits: HttpLimits | None = None) -> ApiServer:
    """Start the API for ``predictor`` (an :class:`~device_agent.serve.agent.Agent`) on a background thread
    (port 0: any free port; see ``.port``).

    ``limits`` (when given) replaces ``max_body_bytes`` and ``max_connections``. Without ``tokens`` the
    API listens on loopback only: any other ``host`` is refused with a :class:`ConfigError`.
    """
    if tokens is None and not is_loopback(host):
        raise ConfigError(f"[api] host {host!r} listens beyond loopback without authentication: set [api] token_file "
                          "(one bearer token per line, e.g. `openssl rand -hex 32`), or host = \"127.0.0.1\"", field="api.token_file")
    limits = limits or HttpLimits(max_body_bytes=max_body_bytes, max_connections=max_connections,
                                  max_inflight_bytes=max(16 << 20, max_body_bytes))
    t0 = time.perf_counter()
    loop = asyncio.new_event_loop()
    app = Router(predictor, tokens=tokens, max_body_bytes=limits.max_body_bytes)
    listener = Listener(app, limits, loop)
    thread = threading.Thread(target=loop.run_forever, name="edgekit-http", daemon=True)
    thread.start()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    coro = loop.create_server(lambda: Connection(listener), host, port, family=family, ssl=ssl_context, backlog=1024,
                              reuse_address=True, ssl_handshake_timeout=limits.header_timeout_s if ssl_context else None)
    try:
        server = asyncio.run_coroutine_threadsafe(coro, loop).result(30)
    except OSError as e:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}; change [api] host/port or stop what uses the port",
                          field="api.port") from e
    api = ApiServer(listener, server, thread, tls=ssl_context is not None)
    app.register_metrics(listener)
    log.info("HTTP API on %s (%.0f ms)%s", api.url, (time.perf_counter() - t0) * 1000, ", token required" if tokens else "")
    return api
