"""The local HTTP API (stdlib ``http.server``: nothing to install on the device).

Routes (the OpenAPI document at ``GET /openapi.json`` describes exactly these)::

    POST /v1/predict      JSON {"inputs": {name: nested lists}, "top_k"?: int, "request_id"?: str}
                          or a raw body: application/x-npy (single-input models, or ?input=NAME)
                          or application/x-npz (one array per input name).
                          Answers JSON, or .npz outputs with "Accept: application/x-npz".
    POST /v1/feedback     late ground truth: {"request_id", "label", "index"?} or {"items": [...]} (classifiers;
                          see device_agent.telemetry.feedback). One item: 200, or 404 unknown_id / 409 duplicate /
                          400 bad_label / malformed. Batch: 200 with a result per item.
    GET  /v1/model        model identity, signature, artifact, self-test
    GET  /healthz         the process is alive (always 200 while it serves)
    GET  /readyz          200 when the model is loaded and passed its self-test, else 503
    GET  /metrics         Prometheus text format
    GET  /openapi.json    this API's OpenAPI 3.1 document

Errors are ``{"error": {kind, message, input, expected, given}, "request_id": ...}`` with 400
(bad input), 404, 405, 411 (no Content-Length), 413 (too large), 415 (content type),
500 (runtime failure), 503 (not ready / too many connections). A bad request never stops the
server. Connections are bounded (``max_connections``); idle keep-alive sockets time out.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from device_agent.contract.errors import ConfigError, InvalidInput, NotReady, PayloadTooLarge
from device_agent.contract.types import JsonDict
from device_agent.runtime.base import BackendError
from device_agent.serve.bodies import NPZ, REQUEST_ID, parse_predict
from device_agent.serve.openapi import openapi
from device_agent.serve.predictor import Predictor
from device_agent.telemetry.feedback import MAX_ITEMS

__all__ = ["ROUTES", "ApiServer", "serve"]

log = logging.getLogger("edgekit.agent.http")

ROUTES = {("POST", "/v1/predict"), ("POST", "/v1/feedback"), ("GET", "/v1/model"), ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/openapi.json")}
IDLE_TIMEOUT_S = 30
#: what the API answers instead of ``InvalidInput.status`` for these kinds
_STATUS_OF_KIND = {"length_required": 411, "content_type": 415}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, addr: tuple[str, int], handler: type[BaseHTTPRequestHandler], predictor: Predictor, max_body_bytes: int,
                 max_connections: int) -> None:
        self.predictor = predictor
        self.max_body_bytes = max_body_bytes
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(addr, handler)

    def process_request(self, request: socket.socket, client_address: Any) -> None:  # type: ignore[override]  # a TCP server's request is its socket
        if not self._slots.acquire(blocking=False):
            # over the limit: answer and close here, without a thread per rejected connection
            body = b'{"error":{"kind":"busy","message":"too many connections; retry shortly","input":null,"expected":null,"given":null}}'
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
                                b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: socket.socket, client_address: Any) -> None:  # type: ignore[override]
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: no TCP handshake per prediction
    disable_nagle_algorithm = True  # a response is one write, but a delayed ACK must never hold one back (~40 ms)
    server_version = "edgekit-agent"
    timeout = IDLE_TIMEOUT_S
    server: _Server

    # --- dispatch --------------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        self._query = parse_qs(url.query)
        self._route = path if any(p == path for _, p in ROUTES) else "other"
        given = self.headers.get("X-Request-Id") or ""
        # echoed in a response header: only a well-formed id is (CR/LF in it would split the response)
        self._request_id = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        agent = self.server.predictor
        try:
            if (method, path) not in ROUTES:
                if any(p == path for _, p in ROUTES):
                    allowed = ", ".join(m for m, p in sorted(ROUTES) if p == path)
                    self._drain_body()
                    return self._error(405, "method_not_allowed", f"{method} is not allowed on {path}; use {allowed}", headers={"Allow": allowed})
                self._drain_body()
                routes = ", ".join(f"{m} {p}" for m, p in sorted(ROUTES, key=lambda r: r[1]))
                return self._error(404, "not_found", f"no route {method} {path}; routes: {routes}")
            if path == "/v1/predict":
                return self._predict(agent)
            if path == "/v1/feedback":
                return self._feedback(agent)
            if path == "/v1/model":
                return self._json(200, agent.model_info())
            if path == "/healthz":
                return self._json(200, {"status": "ok", **agent.health()})
            if path == "/readyz":
                readiness = agent.readiness()
                return self._json(200 if readiness["ready"] else 503, readiness)
            if path == "/metrics":
                return self._send(200, agent.metrics.render().encode(), "text/plain; version=0.0.4; charset=utf-8")
            if path == "/openapi.json":
                return self._json(200, openapi(agent))
        except Exception:  # a bug must not take the server down; it is logged and reported as 500
            log.exception("HTTP %s %s failed", method, path)
            self.close_connection = True
            return self._error(500, "internal", "internal error in the agent; see its log")

    # --- predict -----------------------------------------------------------------------------------

    def _predict(self, agent: Predictor) -> None:
        try:
            body = self._read_body()
            ctype = (self.headers.get("Content-Type") or "application/json").split(";")[0].strip().lower()
            inputs, options = parse_predict(body, ctype, self._query, agent)
            top_k = options.get("top_k")
            prediction = agent.predict(inputs, top_k=top_k, request_id=options.get("request_id") or self._request_id)
        except InvalidInput as e:
            return self._error(_STATUS_OF_KIND.get(e.kind, e.status), e.kind, str(e), detail=e.to_dict())
        except NotReady as e:
            return self._error(503, "not_ready", str(e))
        except BackendError as e:
            return self._error(500, "runtime", str(e))
        self._request_id = prediction.request_id
        if NPZ in (self.headers.get("Accept") or ""):
            buf = io.BytesIO()
            np.savez(buf, **prediction.outputs)  # type: ignore[arg-type]  # output names, not savez's own keywords
            return self._send(200, buf.getvalue(), NPZ, headers={"X-Model-Name": prediction.model["name"],
                                                                  "X-Model-Version": prediction.model["version"]})
        return self._send(200, prediction.to_json(), "application/json")

    def _feedback(self, agent: Predictor) -> None:
        try:
            body = self._read_body()
        except InvalidInput as e:
            return self._error(_STATUS_OF_KIND.get(e.kind, e.status), e.kind, str(e), detail=e.to_dict())
        problem: str | None
        try:
            doc = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            doc = None
            problem = f"the body is not valid JSON: {e}"
        else:
            problem = None
        if isinstance(doc, dict) and "items" in doc:
            items = doc["items"]
            if set(doc) != {"items"} or not isinstance(items, list):
                problem = 'a batch is {"items": [{"request_id": ..., "label": ...}, ...]} and nothing else'
            elif len(items) > MAX_ITEMS:
                problem = f"{len(items)} feedback items in one request; at most {MAX_ITEMS}: split the batch"
            else:
                results = agent.submit_feedback(items)
                accepted = sum(r.accepted for r in results)
                return self._json(200, {"accepted": accepted, "rejected": len(results) - accepted, "results": [r.to_dict() for r in results]})
        elif isinstance(doc, dict):
            result = agent.submit_feedback([doc])[0]
            if result.accepted:
                return self._json(200, result.to_dict())
            code = {"unknown_id": 404, "duplicate": 409}.get(result.outcome, 400)
            return self._error(code, result.outcome, result.message, detail={"given": result.request_id})
        elif problem is None:
            problem = f'the body must be a JSON object {{"request_id", "label"}} or {{"items": [...]}}, got {type(doc).__name__}'
        return self._error(400, "malformed", agent.reject_feedback(problem).message)

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self.close_connection = True
            raise InvalidInput("chunked request bodies are not supported; send Content-Length", kind="length_required")
        length = self.headers.get("Content-Length")
        if length is None:
            raise InvalidInput("POST /v1/predict needs a Content-Length header", kind="length_required")
        try:
            n = int(length)
            if n < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            raise InvalidInput(f"Content-Length {length!r} is not a byte count", kind="malformed") from None
        if n > self.server.max_body_bytes:
            self.close_connection = True  # the body is not read: this connection cannot be reused
            raise PayloadTooLarge(
                f"the request body is {n:,} bytes; this agent accepts at most {self.server.max_body_bytes:,} ([api] max_body_bytes). "
                "Split the batch, or send raw .npy/.npz instead of JSON.",
                kind="too_large", expected=f"≤ {self.server.max_body_bytes} bytes", given=str(n),
            )
        return self.rfile.read(n)

    def _drain_body(self) -> None:
        length = self.headers.get("Content-Length")
        if length and length.isdigit() and int(length) <= self.server.max_body_bytes:
            self.rfile.read(int(length))
        elif length:
            self.close_connection = True

    # --- responses ---------------------------------------------------------------------------------

    def _error(self, code: int, kind: str, message: str, *, detail: dict[str, str | None] | None = None, headers: dict[str, str] | None = None) -> None:
        err: dict[str, str | None] = {"kind": kind, "message": message, "input": None, "expected": None, "given": None}
        if detail:
            err.update(detail)
            err["kind"] = kind
        self._json(code, {"error": err, "request_id": self._request_id}, headers=headers)

    def _json(self, code: int, doc: JsonDict, headers: dict[str, str] | None = None) -> None:
        try:
            text = json.dumps(doc, separators=(",", ":"), allow_nan=False, default=_json_default)
        except ValueError:  # NaN/inf in model outputs: JSON has no such numbers, they become null
            text = json.dumps(_finite(doc), separators=(",", ":"), allow_nan=False, default=_json_default)
        self._send(code, text.encode(), "application/json", headers=headers)

    def _send(self, code: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        # the status line, headers and body go out in one write (one syscall, and the client is not
        # woken by the headers alone), instead of send_response/send_header/end_headers' two
        self.log_request(code)
        lines = [f"{self.protocol_version} {code} {self.responses.get(code, ('',))[0]}", f"Server: {self.version_string()}",
                 f"Date: {self.date_time_string()}", f"Content-Type: {ctype}", f"Content-Length: {len(body)}",
                 f"X-Request-Id: {self._request_id}"]
        if code == 503:
            lines.append("Retry-After: 5")
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if self.close_connection:
            lines.append("Connection: close")
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "strict") + body)
        self.server.predictor.metrics.http_request(self.command, self._route, code)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
        log.debug("%s " + format, self.address_string(), *args)


def _finite(x: object) -> object:
    if isinstance(x, float):
        return x if np.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def _json_default(o: object) -> object:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


class ApiServer:
    """A running HTTP API; ``url`` is where it listens, ``close()`` stops it."""

    def __init__(self, server: _Server) -> None:
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="edgekit-http", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def url(self) -> str:
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def serve(predictor: Predictor, host: str = "127.0.0.1", port: int = 8470, *, max_body_bytes: int = 16 << 20,
          max_connections: int = 32) -> ApiServer:
    """Start the API for ``predictor`` (an :class:`~device_agent.serve.agent.Agent`) on a background thread
    (port 0: any free port; see ``.port``)."""
    server_cls: type[_Server] = _Server
    if ":" in host:
        server_cls = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
    t0 = time.perf_counter()
    try:
        server = server_cls((host, port), _Handler, predictor, max_body_bytes, max_connections)
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}; change [api] host/port or stop what uses the port",
                          field="api.port") from e
    log.info("HTTP API on %s:%d (%.0f ms)", host, server.server_address[1], (time.perf_counter() - t0) * 1000)
    return ApiServer(server)
