"""The Open Inference Protocol V2 part of the OpenAPI document: its paths and schemas.

The schemas follow the protocol's published ones (KServe ``rest_predict_v2.yaml``; the tests check
real answers against those too) and say what this server adds: the datatypes it takes, ``-1`` for
dimensions of any size, ``null`` for NaN outputs, the binary tensor data extension.
"""

from __future__ import annotations

import numpy as np

from device_agent.contract.manifest import TensorSpec
from device_agent.contract.types import JsonDict
from device_agent.runtime.model import LoadedModel
from device_agent.serve.v2_codec import DATATYPES, datatype_of

__all__ = ["example_tensors", "v2_paths", "v2_schemas"]

#: requests in the document's examples stay small: larger signatures get no example
EXAMPLE_ELEMENTS = 4096


def example_tensors(specs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray] | None:
    """A valid request's inputs (zeros, one sample) for the document's examples; None when they would be large."""
    out = {}
    for s in specs:
        if s.dtype == "string":  # a table model: its example is a row of fields (device_agent.serve.openapi_rows)
            return None
        shape = tuple(d if isinstance(d, int) and d >= 0 else 1 for d in s.shape)
        out[s.name] = np.zeros(shape, dtype=s.dtype)
    return out if sum(a.size for a in out.values()) <= EXAMPLE_ELEMENTS else None


def _path_params(model: LoadedModel) -> tuple[JsonDict, JsonDict]:
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}, "example": model.name,
            "description": "The model's name (GET /v2/models/{name} answers 404 for any other)."}
    version = {"name": "version", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}, "example": model.version,
               "description": "The model version served now; any other is a 404 (after an update, the new one)."}
    return name, version


def _infer_example(model: LoadedModel) -> JsonDict:
    tensors = example_tensors(model.inputs)
    if tensors is None:
        return {}
    return {"example": {"inputs": [{"name": k, "shape": list(a.shape), "datatype": datatype_of(a.dtype), "data": a.reshape(-1).tolist()}
                                   for k, a in tensors.items()]}}
_HEADER_LENGTH = {"name": "Inference-Header-Content-Length", "in": "header", "required": False,
                  "schema": {"type": "string", "pattern": "^[0-9]{1,15}$"},
                  "description": "Binary tensor data extension: the JSON part's length; binary input tensors follow it."}


def _ref(name: str) -> JsonDict:
    return {"$ref": f"#/components/schemas/{name}"}


def _err(description: str) -> JsonDict:
    return {"description": description, "content": {"application/json": {"schema": _ref("V2Error")}}}


def v2_schemas() -> JsonDict:  # layout: table
    params = {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}}
    tensor = {"type": "object", "required": ["name", "datatype", "shape"],
              "properties": {"name": {"type": "string"}, "datatype": {"type": "string"},
                             "shape": {"type": "array", "items": {"type": "integer", "minimum": -1}}}}
    return {
        "V2Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
        "V2ServerMetadata": {"type": "object", "required": ["name", "version", "extensions"],
                             "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                                            "extensions": {"type": "array", "items": {"type": "string"}}}},
        "V2Parameters": params,
        "V2MetadataTensor": tensor,
        "V2ModelMetadata": {"type": "object", "required": ["name", "platform", "inputs", "outputs"],
                            "properties": {"name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
                                           "platform": {"type": "string"},
                                           "inputs": {"type": "array", "items": _ref("V2MetadataTensor")},
                                           "outputs": {"type": "array", "items": _ref("V2MetadataTensor")}}},
        "V2RequestInput": {
            "type": "object", "required": ["name", "shape", "datatype"],
            "properties": {"name": {"type": "string"}, "shape": {"type": "array", "maxItems": 64, "items": {"type": "integer", "minimum": 0}},
                           "datatype": {"type": "string", "enum": list(DATATYPES)}, "parameters": _ref("V2Parameters"),
                           "data": {"type": "array", "description": "Row-major values, flat or nested (or parameters.binary_data_size)."}}},
        "V2RequestOutput": {"type": "object", "required": ["name"],
                            "properties": {"name": {"type": "string"}, "parameters": _ref("V2Parameters")}},
        "V2InferenceRequest": {
            "type": "object", "required": ["inputs"],
            "properties": {"id": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[\\x21-\\x7e]+$"},
                           "parameters": _ref("V2Parameters"), "inputs": {"type": "array", "minItems": 1, "items": _ref("V2RequestInput")},
                           "outputs": {"type": "array", "items": _ref("V2RequestOutput")}}},
        "V2ResponseOutput": {
            "type": "object", "required": ["name", "shape", "datatype"],
            "properties": {"name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                           "datatype": {"type": "string"}, "parameters": _ref("V2Parameters"),
                           "data": {"type": "array", "items": {"type": ["number", "boolean", "null"]},
                                    "description": "Flat, row-major; NaN and ±inf (not JSON) as null."}}},
        "V2InferenceResponse": {
            "type": "object", "required": ["model_name", "outputs"],
            "properties": {"model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
                           "parameters": _ref("V2Parameters"), "outputs": {"type": "array", "items": _ref("V2ResponseOutput")}}},
    }


def _model_routes(base: str, params: list[JsonDict], protected: JsonDict, example: JsonDict) -> JsonDict:  # layout: table
    return {
        base: {"get": {"summary": "Model metadata (V2).", "parameters": params, **protected,
                       "responses": {"200": {"description": "The model's inputs and outputs.", "content": {"application/json": {"schema": _ref("V2ModelMetadata")}}},
                                     "404": _err("No such model or version here.")}}},
        base + "/ready": {"get": {"summary": "Model ready (V2): 200 true, 400 false; empty body.", "parameters": params, **protected,
                                  "responses": {"200": {"description": "Ready."}, "400": {"description": "Not ready (self-test failed)."},
                                                "404": _err("No such model or version here.")}}},
        base + "/infer": {"post": {
            "summary": "Inference (V2), with JSON tensors or the binary tensor data extension.", "parameters": [*params, _HEADER_LENGTH], **protected,
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": _ref("V2InferenceRequest"), **example},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"},
                                             "description": "The JSON request (Inference-Header-Content-Length bytes), then the binary inputs."}}},
            "responses": {
                "200": {"description": "Outputs; with binary outputs the JSON part is followed by their bytes (Inference-Header-Content-Length).",
                        "content": {"application/json": {"schema": _ref("V2InferenceResponse")},
                                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                "400": _err("The request does not fit the model's signature or the protocol; nothing ran."),
                "404": _err("No such model or version here (an update may have replaced the version)."),
                "408": _err("The request did not arrive whole in time."),
                "411": _err("No Content-Length."),
                "413": _err("Body, batch or element count over the configured limits."),
                "500": _err("The runtime failed."),
                "503": _err("Not ready, or busy (Retry-After)."),
            }}},
    }


def v2_paths(model: LoadedModel, *, protected: JsonDict, tokens: bool) -> JsonDict:
    """The ``/v2`` paths for ``model``; ``protected`` is the security requirement of token routes (``tokens``: they answer 401 without one)."""
    health: JsonDict = {"security": []} if tokens else {}
    name, version = _path_params(model)
    example = _infer_example(model)
    paths: JsonDict = {
        "/v2": {"get": {"summary": "Server metadata (V2).", **protected,
                        "responses": {"200": {"description": "Name, version, extensions.",
                                              "content": {"application/json": {"schema": _ref("V2ServerMetadata")}}}}}},
        "/v2/health/live": {"get": {"summary": "Server live (V2): 200, empty body.", **health,
                                    "responses": {"200": {"description": "Live."}}}},
        "/v2/health/ready": {"get": {"summary": "Server ready (V2): 200 true, 400 false; empty body.", **health,
                                     "responses": {"200": {"description": "Ready."}, "400": {"description": "Not ready."}}}},
        **_model_routes("/v2/models/{name}", [name], protected, example),
        **_model_routes("/v2/models/{name}/versions/{version}", [name, version], protected, example),
    }
    if tokens:
        for path, ops in paths.items():
            if not path.startswith("/v2/health"):
                for op in ops.values():
                    op["responses"]["401"] = _err("No token, or a wrong one: send 'Authorization: Bearer <token>'.")
    return paths
