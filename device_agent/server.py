"""The local HTTP API (stdlib ``http.server``: nothing to install on the device).

Routes (the OpenAPI document at ``GET /openapi.json`` describes exactly these)::

    POST /v1/predict      JSON {"inputs": {name: nested lists}, "top_k"?: int, "request_id"?: str}
                          or a raw body: application/x-npy (single-input models, or ?input=NAME)
                          or application/x-npz (one array per input name).
                          Answers JSON, or .npz outputs with "Accept: application/x-npz".
    POST /v1/feedback     late ground truth: {"request_id", "label", "index"?} or {"items": [...]} (classifiers;
                          see device_agent.feedback). One item: 200, or 404 unknown_id / 409 duplicate /
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
import re
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from device_agent.errors import InvalidInput, NotReady, PayloadTooLarge
from device_agent.runtime import BackendError

if TYPE_CHECKING:
    from device_agent.agent import Agent

__all__ = ["ApiServer", "serve"]

log = logging.getLogger("edgekit.agent.http")

ROUTES = {("POST", "/v1/predict"), ("POST", "/v1/feedback"), ("GET", "/v1/model"), ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/openapi.json")}
NPY = "application/x-npy"
NPZ = "application/x-npz"
IDLE_TIMEOUT_S = 30
#: a request id a caller may choose: it is echoed in the X-Request-Id header and telemetry
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, addr: tuple[str, int], handler: type, agent: Agent, max_body_bytes: int, max_connections: int) -> None:
        self.agent = agent
        self.max_body_bytes = max_body_bytes
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(addr, handler)

    def process_request(self, request: socket.socket, client_address: Any) -> None:
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

    def process_request_thread(self, request: socket.socket, client_address: Any) -> None:
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
        self._request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        agent = self.server.agent
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
                ready = agent.ready
                return self._json(200 if ready else 503, {"ready": ready, "reason": agent.not_ready_reason, "selftest": agent.model.selftest.to_dict()})
            if path == "/metrics":
                return self._send(200, agent.metrics.render().encode(), "text/plain; version=0.0.4; charset=utf-8")
            if path == "/openapi.json":
                from device_agent.openapi import openapi

                return self._json(200, openapi(agent))
        except Exception:  # a bug must not take the server down; it is logged and reported as 500
            log.exception("HTTP %s %s failed", method, path)
            self.close_connection = True
            return self._error(500, "internal", "internal error in the agent; see its log")

    # --- predict -----------------------------------------------------------------------------------

    def _predict(self, agent: Agent) -> None:
        try:
            body = self._read_body()
            inputs, options = self._parse(body, agent)
            top_k = options.get("top_k")
            prediction = agent.predict(inputs, top_k=top_k, request_id=options.get("request_id") or self._request_id)
        except InvalidInput as e:
            code = {"length_required": 411, "content_type": 415}.get(e.kind, e.status)
            return self._error(code, e.kind, str(e), detail=e.to_dict())
        except NotReady as e:
            return self._error(503, "not_ready", str(e))
        except BackendError as e:
            return self._error(500, "runtime", str(e))
        self._request_id = prediction.request_id
        if NPZ in (self.headers.get("Accept") or ""):
            buf = io.BytesIO()
            np.savez(buf, **prediction.outputs)
            return self._send(200, buf.getvalue(), NPZ, headers={"X-Model-Name": prediction.model["name"],
                                                                  "X-Model-Version": prediction.model["version"]})
        return self._send(200, prediction.to_json(), "application/json")

    def _feedback(self, agent: Agent) -> None:
        from device_agent.feedback import MAX_ITEMS, FeedbackResult

        try:
            body = self._read_body()
        except InvalidInput as e:
            code = {"length_required": 411, "content_type": 415}.get(e.kind, e.status)
            return self._error(code, e.kind, str(e), detail=e.to_dict())
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
        counted: FeedbackResult = agent.feedback.reject_request(problem) if agent.feedback is not None else FeedbackResult("malformed", None, problem)
        return self._error(400, "malformed", counted.message)

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

    def _parse(self, body: bytes, agent: Agent) -> tuple[dict[str, Any], dict[str, Any]]:
        ctype = (self.headers.get("Content-Type") or "application/json").split(";")[0].strip().lower()
        options: dict[str, Any] = {}
        if "top_k" in self._query:
            options["top_k"] = _int_option(self._query["top_k"][0], "top_k")
        if ctype == "application/x-www-form-urlencoded" and body[:1] == b"{":
            ctype = "application/json"  # `curl -d '{...}'` without -H content-type: it is JSON all the same
        if ctype == "application/json":
            try:
                doc = json.loads(body)
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise InvalidInput(f"the body is not valid JSON: {e}", kind="malformed", expected="JSON", given="invalid JSON") from None
            if not isinstance(doc, dict) or "inputs" not in doc:
                raise InvalidInput(
                    'the JSON body must be an object with "inputs": {"<input name>": [...]}; the model takes: ' + agent.validator.signature_text(),
                    kind="malformed", expected='{"inputs": {...}}', given=type(doc).__name__ if not isinstance(doc, dict) else "no 'inputs' key",
                )
            unknown = set(doc) - {"inputs", "top_k", "request_id"}
            if unknown:
                raise InvalidInput(f"unknown key(s) in the body: {', '.join(sorted(unknown))}; allowed: inputs, top_k, request_id",
                                   kind="malformed", given=", ".join(sorted(unknown)))
            if "top_k" in doc:
                options["top_k"] = _int_option(doc["top_k"], "top_k")
            if "request_id" in doc:
                if not isinstance(doc["request_id"], str) or not _REQUEST_ID.fullmatch(doc["request_id"]):
                    raise InvalidInput("request_id must be 1 to 128 visible ASCII characters (no spaces or control characters)",
                                       kind="malformed")
                options["request_id"] = doc["request_id"]
            return doc["inputs"], options
        if ctype in (NPY, "application/octet-stream"):
            names = [s.name for s in agent.model.inputs]
            name = self._query.get("input", [None])[0]
            if name is None:
                if len(names) != 1:
                    raise InvalidInput(f"a raw .npy body carries one input; this model has {len(names)} ({', '.join(names)}): "
                                       "add ?input=NAME or send application/x-npz", kind="malformed")
                name = names[0]
            return {name: _load_npy(body)}, options
        if ctype in (NPZ, "application/zip"):
            try:
                with np.load(io.BytesIO(body), allow_pickle=False) as z:
                    return {k: z[k] for k in z.files}, options
            except Exception as e:  # numpy raises ValueError, OSError, zipfile errors, ...
                raise InvalidInput(f"the body is not a readable .npz archive: {e}", kind="malformed") from None
        raise InvalidInput(f"Content-Type {ctype!r} is not supported; use application/json, {NPY} or {NPZ}", kind="content_type")

    def _drain_body(self) -> None:
        length = self.headers.get("Content-Length")
        if length and length.isdigit() and int(length) <= self.server.max_body_bytes:
            self.rfile.read(int(length))
        elif length:
            self.close_connection = True

    # --- responses ---------------------------------------------------------------------------------

    def _error(self, code: int, kind: str, message: str, *, detail: dict | None = None, headers: dict[str, str] | None = None) -> None:
        err = {"kind": kind, "message": message, "input": None, "expected": None, "given": None}
        if detail:
            err.update(detail)
            err["kind"] = kind
        self._json(code, {"error": err, "request_id": self._request_id}, headers=headers)

    def _json(self, code: int, doc: Any, headers: dict[str, str] | None = None) -> None:
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
        self.server.agent.metrics.http_request(self.command, self._route, code)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
        log.debug("%s " + format, self.address_string(), *args)


def _int_option(value: Any, name: str) -> int:
    try:
        v = int(value)
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()) or v < 0 or v > 1000:
            raise ValueError
        return v
    except (TypeError, ValueError):
        raise InvalidInput(f"{name} must be an integer between 0 and 1000, got {value!r}", kind="malformed") from None


def _load_npy(body: bytes) -> np.ndarray:
    """A .npy body as an array over the request's own bytes (no copy: read-only, which is all the
    validator and the runtime need). Object arrays (pickles) are refused."""
    try:
        f = io.BytesIO(body)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        if dtype.hasobject:
            raise ValueError("object arrays are not accepted")
        count = int(np.prod(shape, dtype=np.int64))
        if len(body) - f.tell() != count * dtype.itemsize:
            raise ValueError(f"{len(body) - f.tell()} data bytes for shape {list(shape)} {dtype}")
        a = np.frombuffer(body, dtype=dtype, count=count, offset=f.tell())
        return a.reshape(shape, order="F" if fortran else "C")
    except Exception as e:
        raise InvalidInput(f"the body is not a readable .npy array: {e}", kind="malformed") from None


def _finite(x: Any) -> Any:
    if isinstance(x, float):
        return x if np.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def _json_default(o: Any) -> Any:
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


def serve(agent: Agent, host: str = "127.0.0.1", port: int = 8470, *, max_body_bytes: int = 16 << 20, max_connections: int = 32) -> ApiServer:
    """Start the API on a background thread (port 0: any free port; see ``.port``)."""
    server_cls = _Server
    if ":" in host:
        server_cls = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
    t0 = time.perf_counter()
    try:
        server = server_cls((host, port), _Handler, agent, max_body_bytes, max_connections)
    except OSError as e:
        from device_agent.errors import ConfigError

        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}; change [api] host/port or stop what uses the port",
                          field="api.port") from e
    log.info("HTTP API on %s:%d (%.0f ms)", host, server.server_address[1], (time.perf_counter() - t0) * 1000)
    return ApiServer(server)
