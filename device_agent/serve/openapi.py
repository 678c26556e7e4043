"""The OpenAPI 3.1 document of the local HTTP API, specialised to the loaded model.

Kept next to the server and tested against real responses (tests/agent/test_server.py validates
documented response bodies against their schemas; tests/agent/test_fuzz.py lets schemathesis send
thousands of requests generated from it), so it cannot drift from the behaviour.
"""

from __future__ import annotations

from device_agent import __version__
from device_agent.contract.types import JsonDict
from device_agent.serve.images import IMAGE_TYPES, raw_image_input
from device_agent.serve.openapi_rows import rows_example, rows_request_schema
from device_agent.serve.openapi_v2 import example_tensors, v2_paths, v2_schemas
from device_agent.serve.predictor import Predictor
from device_agent.serve.validate import describe_spec

__all__ = ["ERROR_KINDS", "openapi"]

ERROR_KINDS = (
    "unknown_input", "missing_input", "dtype", "shape", "nonfinite", "too_large", "malformed", "content_type", "length_required",
    "not_found", "method_not_allowed", "not_ready", "runtime", "busy", "internal", "unknown_id", "duplicate", "bad_label",
    "unauthorized", "timeout", "header_too_large", "missing_field", "unknown_field", "field_type", "unknown_category", "out_of_range",
    "null",
)

_NULLABLE_STR = {"type": ["string", "null"]}


def _tensor_schema() -> JsonDict:
    # nested lists of numbers (or booleans), any depth; a scalar for rank-0 inputs
    return {"description": "A tensor as nested lists, in the model's source layout (see GET /v1/model).",
            "anyOf": [{"type": "array"}, {"type": "number"}, {"type": "boolean"}]}


def _schemas(agent: Predictor) -> JsonDict:  # layout: table
    inputs = agent.model.inputs
    spec = {
        "type": "object", "required": ["name", "dtype", "shape", "layout"],
        "properties": {"name": {"type": "string"}, "dtype": {"type": "string"}, "shape": {"type": "array", "items": {"type": ["integer", "string", "null"]}},
                       "layout": _NULLABLE_STR},
    }
    return {
        "TensorSpec": spec,
        "PredictRequest": {
            "type": "object", "required": ["inputs"], "additionalProperties": False,
            "properties": {
                "inputs": {"type": "object", "description": "One tensor per model input: " + ", ".join(f"{s.name} ({describe_spec(s)})" for s in inputs),
                           "required": [s.name for s in inputs], "additionalProperties": False,
                           "properties": {s.name: _tensor_schema() for s in inputs}},
                "top_k": {"type": "integer", "minimum": 0, "maximum": 1000, "description": "Labels per sample for classifiers (0: none)."},
                "request_id": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[\\x21-\\x7e]+$"},
            },
        },
        "TopK": {"type": "object", "required": ["index", "label", "score"],
                 "properties": {"index": {"type": "integer"}, "label": {"type": "string"}, "score": {"type": "number"}}},
        "PredictResponse": {
            "type": "object", "required": ["model", "request_id", "timestamp", "latency_ms", "outputs", "top_k"],
            "properties": {
                "model": {"type": "object", "required": ["name", "version"], "properties": {"name": {"type": "string"}, "version": {"type": "string"}}},
                "request_id": {"type": "string"},
                "timestamp": {"type": "string", "format": "date-time"},
                "latency_ms": {"type": "number", "description": "Inference time in the runtime (excludes HTTP and validation)."},
                "outputs": {"type": "object", "properties": {s.name: _tensor_schema() for s in agent.model.outputs}},
                "top_k": {"type": ["array", "null"], "items": {"type": "array", "items": {"$ref": "#/components/schemas/TopK"}},
                          "description": "Per sample, best first; null for models that are not classifiers."},
            },
        },
        "FeedbackItem": {
            "type": "object", "required": ["request_id", "label"], "additionalProperties": False,
            "properties": {"request_id": {"type": "string", "minLength": 1, "maxLength": 128, "description": "The request_id of an earlier prediction."},
                           "label": {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}, {"type": "array"}],
                                     "description": "True class index or name; a list with one per row for a batched prediction."},
                           "index": {"type": "integer", "minimum": 0, "description": "The row of a batched prediction this label is for."}},
        },
        "FeedbackBatch": {"type": "object", "required": ["items"], "additionalProperties": False,
                          "properties": {"items": {"type": "array", "maxItems": 10_000,
                                                   "items": {"description": "A FeedbackItem. An item that is not one is answered with its "
                                                                            "reason in results: the batch itself is not refused."}}}},
        "FeedbackResult": {
            "type": "object", "required": ["outcome", "request_id", "message"],
            "properties": {"outcome": {"type": "string", "enum": ["accepted", "unknown_id", "duplicate", "bad_label", "malformed"]},
                           "request_id": _NULLABLE_STR, "message": {"type": "string"}, "rows": {"type": "integer"}, "correct": {"type": "integer"}},
        },
        "FeedbackBatchResult": {
            "type": "object", "required": ["accepted", "rejected", "results"],
            "properties": {"accepted": {"type": "integer"}, "rejected": {"type": "integer"},
                           "results": {"type": "array", "items": {"$ref": "#/components/schemas/FeedbackResult"}}},
        },
        "Error": {
            "type": "object", "required": ["error", "request_id"],
            "properties": {
                "error": {"type": "object", "required": ["kind", "message", "input", "expected", "given"],
                          "properties": {"kind": {"type": "string", "enum": list(ERROR_KINDS)}, "message": {"type": "string"},
                                         "input": _NULLABLE_STR, "expected": _NULLABLE_STR, "given": _NULLABLE_STR,
                                         "row": {"type": "integer", "minimum": 0, "description": "The table row at fault (0-based)."}}},
                "request_id": {"type": "string"},
            },
        },
        "ModelInfo": {
            "type": "object",
            "required": ["name", "version", "artifact", "format", "runtime", "task", "inputs", "outputs", "selftest", "tracked_features", "limits"],
            "properties": {
                "name": {"type": "string"}, "version": {"type": "string"}, "artifact": {"type": "string"}, "format": {"type": "string"},
                "precision": _NULLABLE_STR, "runtime": {"type": "string"}, "task": {"type": "string", "enum": ["classification", "generic"]},
                "labels": {"type": ["array", "null"], "items": {"type": "string"}},
                "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/TensorSpec"}},
                "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/TensorSpec"}},
                "selftest": {"$ref": "#/components/schemas/SelfTest"},
                "tracked_features": {"type": "array", "items": {"type": "string"}},
                "limits": {"type": "object", "required": ["max_batch", "max_elements"],
                           "properties": {"max_batch": {"type": "integer"}, "max_elements": {"type": "integer"}}},
            },
        },
        "SelfTest": {"type": "object", "required": ["passed", "vectors", "max_abs_error", "detail"],
                     "properties": {"passed": {"type": "boolean"}, "vectors": {"type": "integer"}, "max_abs_error": {"type": "number"},
                                    "detail": {"type": "string"}, "seconds": {"type": "number"}}},
        "Health": {"type": "object", "required": ["status", "ready", "uptime_s", "model", "agent_version"],
                   "properties": {"status": {"type": "string", "enum": ["ok"]}, "ready": {"type": "boolean"}, "reason": _NULLABLE_STR,
                                  "uptime_s": {"type": "number"}, "model": {"type": "object"}, "agent_version": {"type": "string"},
                                  "outbox": {"type": "object"}, "mqtt": {"type": "object"},
                                  "ota": {"type": "object", "description": "Update state (device_agent.ota.updater.Updater.status) when OTA is on.",
                                          "properties": {"state": {"type": "string"}, "job": _NULLABLE_STR, "reason": {"type": "string"},
                                                         "detail": {"type": "string"}, "queue": {"type": "array", "items": {"type": "string"}},
                                                         "current": _NULLABLE_STR, "previous": _NULLABLE_STR,
                                                         "history": {"type": "array", "items": {"type": "object"}},
                                                         "progress": {"type": "string"}}}}},
        "Ready": {"type": "object", "required": ["ready", "reason", "selftest"],
                  "properties": {"ready": {"type": "boolean"}, "reason": _NULLABLE_STR, "selftest": {"$ref": "#/components/schemas/SelfTest"}}},
    }


def _json(ref: str) -> JsonDict:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}


def _err(description: str) -> JsonDict:
    return {"description": description, "content": _json("Error")}


def openapi(agent: Predictor, *, tokens: bool = False) -> JsonDict:
    """The document served at ``GET /openapi.json`` (``tokens``: the API requires a bearer token)."""
    m = agent.model
    protected: JsonDict = {"security": [{"bearer": []}]} if tokens else {}
    unauthorized = _err("No token, or a wrong one: send 'Authorization: Bearer <token>'.") if tokens else None
    fields = m.manifest.fields if m.manifest is not None else ()
    tensors = example_tensors(m.inputs)
    example = {"example": {"inputs": {k: a.tolist() for k, a in tensors.items()}}} if tensors is not None else {}
    paths = _v1_paths(protected, rows_example(fields) if fields else example)
    for path, ops in paths.items():
        for method, op in ops.items():
            if method == "post":  # what any request with a body may meet before it reaches its route
                op["responses"].update({"408": _err("The request did not arrive whole in time."), "411": _err("No Content-Length."),
                                        "413": _err("Body over the configured limit ([api] max_body_bytes)."),
                                        "503": op["responses"].get("503") or _err("Busy: too many request bytes in flight (Retry-After).")})
            if unauthorized is not None and path not in ("/healthz", "/readyz"):
                op["responses"]["401"] = unauthorized
    doc: JsonDict = {
        "openapi": "3.1.0",
        "info": {"title": "edgekit device agent", "version": __version__,
                 "description": f"Local inference API serving {m.name} {m.version} ({m.file.name}, {m.backend.runtime}): its own /v1 API "
                                "and the Open Inference Protocol V2 (KServe / Triton REST, with the binary tensor data extension)."},
        "paths": {**paths, **v2_paths(m, protected=protected, tokens=tokens)},
        "components": {"schemas": {**_schemas(agent), **v2_schemas()}},
    }
    if fields:
        doc["components"]["schemas"]["PredictRequest"] = rows_request_schema(fields)
    if raw_image_input(m.inputs) is not None:  # the photo itself, decoded on the device (device_agent.serve.images)
        content = doc["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
        for ctype in IMAGE_TYPES:
            content[ctype] = {"schema": {"type": "string", "format": "binary"},
                              "description": "An image file: decoded here (EXIF orientation applied, RGB), resized by the model's own graph."}
    if tokens:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer",
                                                           "description": "A line of the agent's [api] token_file."}}
    return doc


def _v1_paths(protected: JsonDict, example: JsonDict) -> JsonDict:  # layout: table
    open_: JsonDict = {"security": []} if protected else {}
    return {
        "/v1/predict": {"post": {
            "summary": "Run the model on a (batched) request.", **protected,
            "parameters": [
                {"name": "top_k", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0, "maximum": 1000}},
                {"name": "input", "in": "query", "required": False, "schema": {"type": "string"},
                 "description": "For application/x-npy bodies: which input the array is (needed for multi-input models)."},
                {"name": "X-Request-Id", "in": "header", "required": False, "schema": {"type": "string"}},
            ],
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}, **example},
                "application/x-npy": {"schema": {"type": "string", "format": "binary"}, "description": "One input as a .npy file."},
                "application/x-npz": {"schema": {"type": "string", "format": "binary"}, "description": "Inputs as a .npz archive keyed by name."},
            }},
            "responses": {
                "200": {"description": "Outputs (source layout) and, for classifiers, top-k labels.",
                        "content": {**_json("PredictResponse"), "application/x-npz": {"schema": {"type": "string", "format": "binary"},
                                                                                       "description": "With Accept: application/x-npz."}}},
                "400": _err("The request does not fit the model's signature; nothing ran."),
                "415": _err("Unsupported Content-Type."),
                "500": _err("The runtime failed."),
                "503": _err("Not ready (self-test failed), or busy (Retry-After)."),
            },
        }},
        "/v1/feedback": {"post": {
            "summary": "Late ground truth for earlier classifier predictions; joined by request_id, reported as windowed accuracy in telemetry.",
            **protected,
            "requestBody": {"required": True, "content": {"application/json": {"schema": {"anyOf": [
                {"$ref": "#/components/schemas/FeedbackItem"}, {"$ref": "#/components/schemas/FeedbackBatch"}]}}}},
            "responses": {
                "200": {"description": "One item joined (FeedbackResult), or a batch processed (a result per item, rejected ones counted).",
                        "content": {"application/json": {"schema": {"anyOf": [{"$ref": "#/components/schemas/FeedbackResult"},
                                                                             {"$ref": "#/components/schemas/FeedbackBatchResult"}]}}}},
                "400": _err("A label of the wrong type or range (bad_label), or a body that is not feedback (malformed)."),
                "404": _err("No prediction with that request_id (never made here, or past the retention): unknown_id."),
                "409": _err("That prediction was labelled before; the first label stands: duplicate."),
            },
        }},
        "/v1/model": {"get": {"summary": "Model identity, signature and self-test.", **protected,
                              "responses": {"200": {"description": "Model information.", "content": _json("ModelInfo")}}}},
        "/healthz": {"get": {"summary": "Liveness: the agent process serves (open; the OTA job history needs a token).", **open_,
                             "responses": {"200": {"description": "Alive.", "content": _json("Health")}}}},
        "/readyz": {"get": {"summary": "Readiness: model loaded and self-test passed (open).", **open_,
                            "responses": {"200": {"description": "Ready.", "content": _json("Ready")},
                                          "503": {"description": "Not ready.", "content": _json("Ready")}}}},
        "/metrics": {"get": {"summary": "Prometheus metrics.", **protected,
                             "responses": {"200": {"description": "Text exposition format 0.0.4.",
                                                   "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/openapi.json": {"get": {"summary": "This document.", **protected,
                                  "responses": {"200": {"description": "OpenAPI 3.1.", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
    }
