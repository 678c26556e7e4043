"""The routes of the HTTP API: which request goes where, who may call it, and the ``/v1`` handlers.

::

    POST /v1/predict      JSON {"inputs": {name: nested lists}, "top_k"?: int, "request_id"?: str}
                          or a raw body: application/x-npy (single-input models, or ?input=NAME)
                          or application/x-npz (one array per input name).
                          Answers JSON, or .npz outputs with "Accept: application/x-npz".
    POST /v1/feedback     late ground truth: {"request_id", "label", "index"?} or {"items": [...]} (classifiers;
                          see device_agent.telemetry.feedback). One item: 200, or 404 unknown_id / 409 duplicate /
                          400 bad_label / malformed. Batch: 200 with a result per item.
    GET  /v1/model        model identity, signature, artifact, self-test
    GET  /healthz         the process is alive (always 200 while it serves; no job history without a token)
    GET  /readyz          200 when the model is loaded and passed its self-test, else 503
    GET  /metrics         Prometheus text format
    GET  /openapi.json    this API's OpenAPI 3.1 document
    /v2/...               the Open Inference Protocol (device_agent.serve.v2)

``/v1`` errors are ``{"error": {kind, message, input, expected, given}, "request_id": ...}`` with 400
(bad input), 401 (no or wrong token), 404, 405, 408 (request not whole in time), 411 (no
Content-Length), 413 (too large), 415 (content type), 431 (head too large), 500 (runtime failure),
503 (not ready / busy, with Retry-After). ``/v2`` errors are ``{"error": "..."}`` as the protocol says.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote

from device_agent.contract.errors import InvalidInput, NotReady
from device_agent.runtime.base import BackendError
from device_agent.serve import v2
from device_agent.serve.auth import Tokens
from device_agent.serve.bodies import NPZ, npz_bytes, parse_predict
from device_agent.serve.exchange import Request, Response, RouteMatch, new_request_id
from device_agent.serve.jsonbody import dumps, loads
from device_agent.serve.openapi import openapi
from device_agent.serve.predictor import Predictor
from device_agent.serve.wire import RequestHead
from device_agent.telemetry.feedback import MAX_ITEMS

if TYPE_CHECKING:
    from device_agent.serve.listener import Listener

__all__ = ["OPEN_ROUTES", "ROUTES", "Router"]

log = logging.getLogger("edgekit.agent.http")

ROUTES = {("POST", "/v1/predict"), ("POST", "/v1/feedback"), ("GET", "/v1/model"), ("GET", "/healthz"), ("GET", "/readyz"),
          ("GET", "/metrics"), ("GET", "/openapi.json"), *v2.ROUTES}
#: served without a token: probes carry no secret (and /healthz shows no job history without one)
OPEN_ROUTES = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})
_EXACT = {p for _, p in ROUTES if "{" not in p}
_PATTERNS = [(p, re.compile("^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(p)) + "$"))
             for p in sorted({p for _, p in ROUTES if "{" in p})]
_METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"})
#: what the API answers instead of ``InvalidInput.status`` for these kinds
_STATUS_OF_KIND = {"length_required": 411, "content_type": 415}


class Router:
    """The API's routes over one :class:`Predictor` (implements :class:`device_agent.serve.exchange.App`)."""

    def __init__(self, predictor: Predictor, *, tokens: Tokens | None = None, max_body_bytes: int = 16 << 20) -> None:
        self.predictor = predictor
        self.tokens = tokens
        self.max_body_bytes = max_body_bytes

    # --- on the event loop ---------------------------------------------------------------------------

    def match(self, head: RequestHead) -> RouteMatch:
        path = head.path
        if path in _EXACT:
            return RouteMatch(path, v2=path.startswith("/v2"), open=path in OPEN_ROUTES, heavy=head.method == "POST")
        for template, pattern in _PATTERNS:
            m = pattern.match(path)
            if m is not None:
                params = tuple((k, unquote(v)) for k, v in m.groupdict().items())
                return RouteMatch(template, v2=template.startswith("/v2"), open=template in OPEN_ROUTES,
                                  heavy=head.method == "POST", params=params)
        return RouteMatch("other", v2=path.startswith("/v2/") or path == "/v2", heavy=False)

    def authorized(self, head: RequestHead) -> bool:
        return self.tokens is None or self.tokens.check(head.headers.get("authorization"))

    def count(self, method: str, route: str, status: int) -> None:
        # labels from a closed set (routes, methods, statuses): a client inventing methods or paths adds no series
        self.predictor.metrics.http_request(method if method in _METHODS else "other", route, status)

    def error(self, match: RouteMatch, status: int, kind: str, message: str, *, request_id: str | None = None,
              detail: dict[str, str | int | None] | None = None) -> Response:
        request_id = request_id or new_request_id()
        headers = {}
        if status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="edgekit-agent"'
        if status == 503:
            headers["Retry-After"] = "5" if kind == "not_ready" else "1"
        if match.v2:
            return Response(status, dumps({"error": message}), headers=headers, request_id=request_id)
        err: dict[str, str | int | None] = {"kind": kind, "message": message, "input": None, "expected": None, "given": None}
        if detail:
            err.update(detail)
            err["kind"] = kind
        return Response(status, dumps({"error": err, "request_id": request_id}), headers=headers, request_id=request_id)

    def register_metrics(self, listener: Listener) -> None:
        m = self.predictor.metrics
        m.gauge("edgekit_agent_http_connections", "Open HTTP connections.", lambda: len(listener.conns))
        m.gauge("edgekit_agent_http_inflight_bytes", "Request body bytes held in memory ([api] max_inflight_bytes bounds them).",
                lambda: listener.budget.used)
        m.gauge("edgekit_agent_http_waiting", "Requests waiting for room in the body budget.", lambda: listener.budget.waiting)
        m.gauge("edgekit_agent_http_evicted_total", "Idle or stalled connections closed to admit new ones at max_connections.",
                lambda: listener.evicted)

    # --- on a worker thread ----------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        match = request.match
        try:
            if (request.method, match.route) not in ROUTES:
                return self._not_routed(request)
            if match.v2:
                return v2.handle(self.predictor, request)
            return self._v1(request)
        except Exception:  # a bug must not take the server down; it is logged and reported as 500
            log.exception("HTTP %s %s failed", request.method, request.path)
            r = self.error(match, 500, "internal", "internal error in the agent; see its log", request_id=request.request_id)
            r.close = True
            return r

    def _not_routed(self, request: Request) -> Response:
        match, method, path = request.match, request.method, request.path
        if match.route != "other":
            allowed = ", ".join(m for m, p in sorted(ROUTES) if p == match.route)
            r = self.error(match, 405, "method_not_allowed", f"{method} is not allowed on {path}; use {allowed}", request_id=request.request_id)
            r.headers["Allow"] = allowed
            return r
        routes = ", ".join(f"{m} {p}" for m, p in sorted(ROUTES, key=lambda r: r[1]))
        return self.error(match, 404, "not_found", f"no route {method} {path}; routes: {routes}", request_id=request.request_id)

    def _v1(self, request: Request) -> Response:
        agent, route = self.predictor, request.match.route
        if route == "/v1/predict":
            return self._predict(request)
        if route == "/v1/feedback":
            return self._feedback(request)
        if route == "/v1/model":
            return _json(200, agent.model_info())
        if route == "/healthz":
            return _json(200, {"status": "ok", **agent.health(private=request.authorized)})
        if route == "/readyz":
            readiness = agent.readiness()
            return _json(200 if readiness["ready"] else 503, readiness)
        if route == "/metrics":
            return Response(200, agent.metrics.render().encode(), "text/plain; version=0.0.4; charset=utf-8")
        return _json(200, openapi(agent, tokens=self.tokens is not None))

    def _predict(self, request: Request) -> Response:
        agent = self.predictor
        try:
            ctype = (request.head.headers.get("content-type") or "application/json").split(";")[0].strip().lower()
            body = request.body if not isinstance(request.body, memoryview) else bytes(request.body)  # (only V2 bodies are views)
            inputs, options = parse_predict(body, ctype, parse_qs(request.head.query), agent, max_body_bytes=self.max_body_bytes)
            request.body = b""  # the arrays are parsed: the buffer can go before inference
            prediction = agent.predict(inputs, top_k=options.get("top_k"), request_id=options.get("request_id") or request.request_id)
        except InvalidInput as e:
            return self.error(request.match, _STATUS_OF_KIND.get(e.kind, e.status), e.kind, str(e), request_id=request.request_id,
                              detail=e.to_dict())
        except NotReady as e:
            return self.error(request.match, 503, "not_ready", str(e), request_id=request.request_id)
        except BackendError as e:
            return self.error(request.match, 500, "runtime", str(e), request_id=request.request_id)
        if NPZ in (request.head.headers.get("accept") or ""):
            return Response(200, npz_bytes(prediction.outputs), NPZ, request_id=prediction.request_id,
                            headers={"X-Model-Name": prediction.model["name"], "X-Model-Version": prediction.model["version"]})
        return Response(200, prediction.to_json(), request_id=prediction.request_id)

    def _feedback(self, request: Request) -> Response:
        agent = self.predictor
        try:
            doc = loads(request.body)
        except InvalidInput as e:
            return self.error(request.match, 400, "malformed", agent.reject_feedback(str(e)).message, request_id=request.request_id)
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
                return _json(200, {"accepted": accepted, "rejected": len(results) - accepted, "results": [r.to_dict() for r in results]})
        elif isinstance(doc, dict):
            result = agent.submit_feedback([doc])[0]
            if result.accepted:
                return _json(200, result.to_dict())
            code = {"unknown_id": 404, "duplicate": 409}.get(result.outcome, 400)
            return self.error(request.match, code, result.outcome, result.message, request_id=request.request_id,
                              detail={"given": result.request_id})
        else:
            problem = f'the body must be a JSON object {{"request_id", "label"}} or {{"items": [...]}}, got {type(doc).__name__}'
        return self.error(request.match, 400, "malformed", agent.reject_feedback(problem).message, request_id=request.request_id)


def _json(status: int, doc: object) -> Response:
    return Response(status, dumps(doc))
