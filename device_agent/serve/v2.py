"""The Open Inference Protocol V2 (KServe V2 / Triton / MLServer REST) beside ``/v1``: same agent, same checks.

::

    GET  /v2                                         server metadata (name, version, extensions)
    GET  /v2/health/live | /v2/health/ready          200 = true, 400 = false, empty body (open: no token)
    GET  /v2/models/{name}[/versions/{version}]      model metadata: inputs and outputs (datatype, shape, -1 = any)
    GET  /v2/models/{name}[/versions/{version}]/ready
    POST /v2/models/{name}[/versions/{version}]/infer

An inference runs through :meth:`Agent.predict` like ``/v1/predict``: the same validation,
telemetry window, metrics, feedback log (the response's ``parameters.request_id`` is the id to
send feedback for) and OTA probation observer. A request for ``/versions/{version}`` runs only on
that version, checked on the very model the request runs on: an update that swaps the model in
between yields a 404, never an answer from another version. Errors are ``{"error": "..."}`` with
400 (bad request), 401, 404 (unknown model or version), 413, 500 (runtime), 503 (not ready).
"""

from __future__ import annotations

from device_agent import __version__
from device_agent.contract.errors import InvalidInput, NotReady
from device_agent.contract.manifest import TensorSpec
from device_agent.contract.types import JsonDict
from device_agent.runtime.base import BackendError
from device_agent.runtime.model import LoadedModel
from device_agent.serve.exchange import Request, Response
from device_agent.serve.jsonbody import dumps
from device_agent.serve.predictor import Predictor
from device_agent.serve.v2_codec import datatype_of, encode_response, parse_infer

__all__ = ["EXTENSIONS", "ROUTES", "handle", "model_metadata", "platform"]

_MODEL = "/v2/models/{name}"
_VERSION = "/v2/models/{name}/versions/{version}"
ROUTES = {("GET", "/v2"), ("GET", "/v2/health/live"), ("GET", "/v2/health/ready"),
          *(("GET", p) for p in (_MODEL, _VERSION, _MODEL + "/ready", _VERSION + "/ready")),
          ("POST", _MODEL + "/infer"), ("POST", _VERSION + "/infer")}
EXTENSIONS = ["binary_tensor_data"]


def platform(model: LoadedModel) -> str:
    """``<project>_<format>`` as the protocol names platforms."""
    runtime = model.backend.runtime
    return "onnxruntime_onnx" if runtime == "onnxruntime" else f"{runtime}_{model.file.suffix.lstrip('.')}"


def model_metadata(model: LoadedModel) -> JsonDict:
    """``GET /v2/models/{name}``: the source-layout signature as V2 tensors (-1 for any size)."""

    def tensor(s: TensorSpec) -> JsonDict:
        shape = [d if isinstance(d, int) and d >= 0 else -1 for d in s.shape]
        return {"name": s.name, "datatype": datatype_of(s.dtype), "shape": shape}

    return {"name": model.name, "versions": [model.version], "platform": platform(model),
            "inputs": [tensor(s) for s in model.inputs], "outputs": [tensor(s) for s in model.outputs]}


def handle(agent: Predictor, request: Request) -> Response:
    """Answer one ``/v2`` request (routes matched by :mod:`device_agent.serve.routes`)."""
    route, params = request.match.route, dict(request.match.params)
    if route == "/v2":
        return Response(200, dumps({"name": "edgekit-agent", "version": __version__, "extensions": EXTENSIONS}))
    if route == "/v2/health/live":
        return Response(200, b"", "")
    if route == "/v2/health/ready":
        return Response(200 if agent.readiness()["ready"] else 400, b"", "")
    model = agent.model
    missing = _unknown(model, params.get("name", ""), params.get("version"))
    if missing is not None:
        return missing
    if route.endswith("/ready"):
        return Response(200 if agent.readiness()["ready"] else 400, b"", "")
    if route.endswith("/infer"):
        return _infer(agent, request, params.get("version"))
    return Response(200, dumps(model_metadata(model)))


def _unknown(model: LoadedModel, name: str, version: str | None) -> Response | None:
    if name != model.name:
        return _error(404, f"unknown model {name!r}; this agent serves {model.name!r} (GET /v2/models/{model.name})")
    if version is not None and version != model.version:
        return _error(404, f"model {name!r} has no version {version!r} here; this agent serves version {model.version!r}")
    return None


def _infer(agent: Predictor, request: Request, version: str | None) -> Response:
    model = agent.model
    if model.manifest is not None and model.manifest.fields:  # BYTES tensors are not decoded here: rows go to /v1
        return _error(400, f"model {model.name!r} takes table rows, validated by field: POST /v1/predict with "
                           '{"instances": [{"<field>": value, ...}]} (this agent decodes no BYTES tensors)')
    try:
        req = parse_infer(request.body, request.head.headers.get("inference-header-content-length"), model.inputs, model.outputs)
        prediction = agent.predict(req.inputs, top_k=0, request_id=req.id or request.request_id, version=version)
    except InvalidInput as e:
        return _error(e.status, str(e))
    except NotReady as e:
        return _error(503, str(e))
    except BackendError as e:
        return _error(500, str(e))
    header: JsonDict = {"model_name": prediction.model["name"], "model_version": prediction.model["version"]}
    if req.id is not None:
        header["id"] = req.id
    header["parameters"] = {"request_id": prediction.request_id}
    body, json_length = encode_response(prediction.outputs, req, header)
    if json_length is None:
        return Response(200, body, request_id=prediction.request_id)
    return Response(200, body, "application/octet-stream", headers={"Inference-Header-Content-Length": str(json_length)},
                    request_id=prediction.request_id)


def _error(status: int, message: str) -> Response:
    headers = {"Retry-After": "5"} if status == 503 else {}
    return Response(status, dumps({"error": message}), headers=headers)
