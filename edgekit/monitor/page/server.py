"""``edgekit fleet serve``: the read-only fleet page over a store, on the standard library's threading HTTP server.

::

    with FleetPage(store, token="s3cret", port=8080) as page:   # 127.0.0.1 unless host= says otherwise
        print(page.url)

Access: with a token, every request carries it — ``Authorization: Bearer <token>``, or
``?token=<token>`` once (the answer sets an HttpOnly, SameSite=Strict cookie and redirects to the
same page without the token, so it stays out of the address bar, history and logs), or that cookie;
anything else gets 401. Without a token the page binds only to a loopback address: any other
address is refused at start (:class:`~edgekit.errors.InputError`).

Only GET and HEAD; pages are server-rendered HTML (:mod:`edgekit.monitor.page.views`), no script,
no external asset (the Content-Security-Policy forbids both), never cached.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import threading
import time
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from edgekit.errors import InputError
from edgekit.monitor.page import views
from edgekit.monitor.page.html import Html, esc, layout
from edgekit.monitor.store import FleetStore

__all__ = ["COOKIE", "FleetPage", "is_loopback"]

log = logging.getLogger("edgekit.monitor.page")

COOKIE = "edgekit_fleet_token"
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}
_ROUTES = {"/": views.devices, "/rollouts": views.rollouts, "/drift": views.drift, "/alerts": views.alerts}


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class FleetPage:
    """The fleet page on a thread (see the module docs).

    Args:
        store: the fleet store to show (read only).
        token: the access token (None: no token, loopback only).
        host: the address to bind.
        port: the port (0: a free one; :attr:`port` says which).
    """

    def __init__(self, store: FleetStore, *, token: str | None = None, host: str = "127.0.0.1", port: int = 8080) -> None:
        if token is not None and not token.strip():
            raise InputError("the fleet page token is empty; put a long random string in --token-file (e.g. openssl rand -hex 32)")
        if token is None and not is_loopback(host):
            raise InputError(f"refusing to serve the fleet page on {host} without a token: anyone on the network could read it; "
                             "pass --token-file, or bind 127.0.0.1")
        self.store = store
        self.token = token.strip() if token else None
        handler = type("Handler", (_Handler,), {"page": self})
        try:
            self._server = ThreadingHTTPServer((host, port), handler)
        except OSError as e:
            raise InputError(f"cannot serve the fleet page on {host}:{port}: {e.strerror or e}; choose another --port") from None
        self._server.daemon_threads = True
        self.host, self.port = str(self._server.server_address[0]), int(self._server.server_address[1])
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> FleetPage:
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, name="edgekit-fleet-page", daemon=True)
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve on this thread until :meth:`close` (from another thread) or Ctrl-C."""
        self._server.serve_forever()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> FleetPage:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def allowed(self, presented: list[str]) -> bool:
        """Whether one of the ``presented`` tokens is the page's (always, without a token)."""
        if self.token is None:
            return True
        want = self.token.encode()
        return any(hmac.compare_digest(want, p.encode()) for p in presented)


class _Handler(BaseHTTPRequestHandler):
    page: FleetPage
    server_version = "edgekit-fleet-page"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        log.info("%s %s", self.address_string(), format % args)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, *, body: bool) -> None:
        url = urlsplit(self.path)
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        given = params.pop("token", None)
        if given is not None and self.page.token is not None and self.page.allowed([given]):
            # the token once in the URL: keep it in a cookie, and send the browser to the page without it
            cookie = f"{COOKIE}={self.page.token}; HttpOnly; SameSite=Strict; Path=/"
            self._send(HTTPStatus.SEE_OTHER, b"", body=body, extra={"Set-Cookie": cookie,
                                                                    "Location": url.path + ("?" + urlencode(params) if params else "")})
            return
        if not self.page.allowed(self._presented()):
            self._send(HTTPStatus.UNAUTHORIZED, layout("Token needed", Html(
                '<p>This fleet page needs its access token: open it once with <code>?token=…</code>, '
                "or send <code>Authorization: Bearer …</code>.</p>")), body=body, extra={"WWW-Authenticate": 'Bearer realm="edgekit fleet"'})
            return
        now = time.time()
        try:
            if url.path.startswith("/device/") and len(url.path) > len("/device/"):
                title, content = views.device(self.page.store, unquote(url.path[len("/device/"):]), params, now)
            elif url.path in _ROUTES:
                title, content = _ROUTES[url.path](self.page.store, params, now)
            else:
                raise views.NotFound(f"no page {url.path}")
        except views.NotFound as e:
            self._send(HTTPStatus.NOT_FOUND, layout("Not found", Html(f"<p>{esc(e)}</p>"), now=now), body=body)
            return
        except views.BadRequest as e:
            self._send(HTTPStatus.BAD_REQUEST, layout("Bad request", Html(f"<p>{esc(e)}</p>"), now=now), body=body)
            return
        except Exception:
            log.exception("fleet page: %s failed", url.path)
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, layout("Error", Html("<p>the store could not be read; see the server's log</p>")),
                       body=body)
            return
        self._send(HTTPStatus.OK, layout(title, content, now=now), body=body)

    def _presented(self) -> list[str]:
        out = []
        auth = self.headers.get("Authorization") or ""
        if auth[:7].lower() == "bearer ":
            out.append(auth[7:].strip())
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(self.headers.get("Cookie") or "")
        except CookieError:  # a malformed cookie header is no token
            return out
        if COOKIE in jar:
            out.append(jar[COOKIE].value)
        return out

    def _send(self, code: HTTPStatus, data: bytes, *, body: bool, extra: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for k, v in {**_HEADERS, **(extra or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        if body:
            self.wfile.write(data)
