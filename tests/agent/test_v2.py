"""The Open Inference Protocol V2 beside /v1: the official client (tritonclient.http), JSON and binary
tensors, and every answer checked against the protocol's published schemas (tests/agent/data)."""

import dataclasses
import http.client
import json
from pathlib import Path

import numpy as np
import pytest

from device_agent.serve.agent import Agent
from device_agent.serve.auth import Tokens
from device_agent.serve.predictor import WrongVersion
from device_agent.serve.server import serve

th = pytest.importorskip("tritonclient.http", reason="the dev extra installs tritonclient[http]")
jsonschema_rs = pytest.importorskip("jsonschema_rs", reason="the dev extra installs schemathesis, which brings jsonschema-rs")

KSERVE = json.loads((Path(__file__).parent / "data" / "kserve_v2_rest_schemas.json").read_text())


def conforms(doc: object, schema: str) -> None:
    """``doc`` is valid against the KServe V2 REST schema named ``schema``."""
    root = {**KSERVE, "$ref": f"#/components/schemas/{schema}"}
    errors = [e.message for e in jsonschema_rs.validator_for(root).iter_errors(doc)]
    assert not errors, f"{schema}: {errors[:3]}"


@pytest.fixture
def agent(digits_dir):
    return Agent.open(digits_dir, max_batch=64)


@pytest.fixture
def api(agent):
    server = serve(agent, max_body_bytes=256 * 1024)
    yield agent, server
    server.close()


@pytest.fixture
def samples(digits):
    return np.load(digits["eval"])["x"][:4]


def raw(server, method, path, body=None, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read(), r
    finally:
        c.close()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_round_trips_json_and_binary_tensors(api, samples, binary):
    agent, server = api
    client = th.InferenceServerClient(f"127.0.0.1:{server.port}")
    inp = th.InferInput("x", list(samples.shape), "FP32")
    inp.set_data_from_numpy(samples, binary_data=binary)
    out = th.InferRequestedOutput("logits", binary_data=binary)
    result = client.infer(agent.model.name, [inp], outputs=[out], request_id="req-1", model_version=agent.model.version)
    np.testing.assert_allclose(result.as_numpy("logits"), agent.predict({"x": samples}).outputs["logits"], rtol=1e-6)
    doc = result.get_response()
    assert doc["id"] == "req-1" and doc["model_name"] == agent.model.name and doc["model_version"] == agent.model.version
    assert doc["outputs"][0]["shape"] == [4, 10] and doc["outputs"][0]["datatype"] == "FP32"
    if binary:
        assert doc["outputs"][0]["parameters"] == {"binary_data_size": 4 * 10 * 4}
    else:
        conforms(doc, "inference_response")
    default = client.infer(agent.model.name, [inp])  # no outputs named: all of them, as binary (the client asks so)
    assert default.as_numpy("logits").shape == (4, 10)
    client.close()


def test_metadata_and_health_follow_the_protocol(api):
    agent, server = api
    client = th.InferenceServerClient(f"127.0.0.1:{server.port}")
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(agent.model.name) and client.is_model_ready(agent.model.name, agent.model.version)
    meta = client.get_server_metadata()
    conforms(meta, "metadata_server_response")
    assert meta["extensions"] == ["binary_tensor_data"]
    model = client.get_model_metadata(agent.model.name)
    conforms(model, "metadata_model_response")
    assert model == client.get_model_metadata(agent.model.name, agent.model.version)
    assert model["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert model["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert model["versions"] == [agent.model.version] and model["platform"] == "onnxruntime_onnx"
    status, body, r = raw(server, "GET", "/v2/health/live")
    assert (status, body, r.getheader("Content-Type")) == (200, b"", None)  # "The HTTP response body should be empty."
    agent._ready_reason = "self-test failed: simulated"
    assert not client.is_server_ready() and not client.is_model_ready(agent.model.name) and client.is_server_live()
    assert raw(server, "GET", "/v2/health/ready")[0] == 400  # "a 4xx status code indicates false"
    client.close()


def test_errors_are_protocol_error_objects_that_say_what_to_change(api, samples):
    agent, server = api
    name, version = agent.model.name, agent.model.version
    client = th.InferenceServerClient(f"127.0.0.1:{server.port}")
    inp = th.InferInput("x", list(samples.shape), "FP32")
    inp.set_data_from_numpy(samples)
    cases = [
        (lambda: client.infer("nope", [inp]), "404", f"unknown model 'nope'; this agent serves '{name}'"),
        (lambda: client.infer(name, [inp], model_version="0.0.1"), "404", f"has no version '0.0.1' here; this agent serves version '{version}'"),
        (lambda: client.get_model_metadata("nope"), "404", "unknown model 'nope'"),
    ]
    f64 = th.InferInput("x", list(samples.shape), "FP64")
    f64.set_data_from_numpy(samples.astype(np.float64))
    cases.append((lambda: client.infer(name, [f64]), "400", "input 'x' has datatype 'FP64'; the model takes FP32"))
    flat = th.InferInput("x", [4, 64], "FP32")
    flat.set_data_from_numpy(samples.reshape(4, 64))
    cases.append((lambda: client.infer(name, [flat]), "400", "expects shape [N, 1, 8, 8] (float32); the request gives [4, 64]"))
    wrong = th.InferInput("y", list(samples.shape), "FP32")
    wrong.set_data_from_numpy(samples)
    cases.append((lambda: client.infer(name, [wrong]), "400", "unknown input 'y'; the model takes: x"))
    nan = th.InferInput("x", [1, 1, 8, 8], "FP32")
    nan.set_data_from_numpy(np.full((1, 1, 8, 8), np.nan, np.float32), binary_data=False)
    cases.append((lambda: client.infer(name, [nan]), "400", "has 64 NaN and 0 infinite value(s)"))
    cases.append((lambda: client.infer(name, [inp], outputs=[th.InferRequestedOutput("logits", class_count=3)]), "400",
                  "the classification extension is not supported"))
    for call, status, message in cases:
        with pytest.raises(th.InferenceServerException) as e:
            call()
        assert e.value.status() == status and message in e.value.message(), (status, e.value.message())
    client.close()
    for body, message in ((b"[]", "must be a JSON object"), (b'{"inputs": []}', '"inputs" must be a non-empty list'),
                          (b'{"inputs": [{"name": "x", "shape": [1, 1, 8, 8], "datatype": "FP32"}]}', "has no data"),
                          (b'{"inputs": [{"name": "x", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [1, 2]}]}', "has 2 values; shape"),
                          (b'{"id": "a b", "inputs": []}', "id must be 1 to 128 visible ASCII characters")):
        status, data, r = raw(server, "POST", f"/v2/models/{name}/infer", body, {"Content-Type": "application/json"})
        doc = json.loads(data)
        conforms(doc, "inference_error_response")
        assert status == 400 and message in doc["error"] and set(doc) == {"error"}, doc
    status, data, _ = raw(server, "POST", f"/v2/models/{name}/infer", b"x" * (256 * 1024 + 1))
    assert status == 413 and set(json.loads(data)) == {"error"}
    agent._ready_reason = "self-test failed: simulated"
    valid = {"inputs": [{"name": "x", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": samples[:1].reshape(-1).tolist()}]}
    status, data, r = raw(server, "POST", f"/v2/models/{name}/infer", json.dumps(valid).encode())
    assert status == 503 and "not ready" in json.loads(data)["error"] and r.getheader("Retry-After") == "5"


def test_binary_requests_are_checked_against_their_declared_sizes(api, samples):
    agent, server = api
    path = f"/v2/models/{agent.model.name}/infer"

    def send(header: dict, data: bytes, length: int | None = None):
        head = json.dumps(header).encode()
        hl = str(len(head) if length is None else length)
        return raw(server, "POST", path, head + data, {"Inference-Header-Content-Length": hl, "Content-Type": "application/octet-stream"})

    one = samples[:1].tobytes()
    x = {"name": "x", "shape": [1, 1, 8, 8], "datatype": "FP32", "parameters": {"binary_data_size": len(one)}}
    status, body, r = send({"inputs": [x], "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}, one)
    assert status == 200 and r.getheader("Content-Type") == "application/octet-stream"
    n = int(r.getheader("Inference-Header-Content-Length"))
    head = json.loads(body[:n])
    assert head["outputs"][0]["parameters"]["binary_data_size"] == len(body) - n == 40
    np.testing.assert_allclose(np.frombuffer(body[n:], "<f4").reshape(1, 10), agent.predict({"x": samples[:1]}).outputs["logits"], rtol=1e-6)
    for header, data, length, message in (
            ({"inputs": [x]}, one[:-4], None, "declares 256 binary bytes but the body holds 252"),
            ({"inputs": [x]}, one + b"\0" * 4, None, "has 4 bytes after the binary tensors"),
            ({"inputs": [{**x, "parameters": {"binary_data_size": 128}}]}, one[:128], None, "needs 256 bytes; binary_data_size is 128"),
            ({"inputs": [x]}, one, 10**9, "Inference-Header-Content-Length '1000000000' must be a byte count")):
        status, body, _ = send(header, data, length)
        assert status == 400 and message in json.loads(body)["error"], body


def test_v2_requests_feed_the_same_telemetry_metrics_and_feedback_as_v1(api, samples):
    agent, server = api
    before = agent.metrics.snapshot()["predictions"]
    requests = agent.window.requests
    client = th.InferenceServerClient(f"127.0.0.1:{server.port}")
    inp = th.InferInput("x", [1, 1, 8, 8], "FP32")
    inp.set_data_from_numpy(samples[:1])
    result = client.infer(agent.model.name, [inp], outputs=[th.InferRequestedOutput("logits")])
    client.close()
    assert agent.metrics.snapshot()["predictions"] == before + 1 and agent.window.requests == requests + 1
    rid = result.get_response()["parameters"]["request_id"]
    predicted = int(result.as_numpy("logits").argmax())
    status, body, _ = raw(server, "POST", "/v1/feedback", json.dumps({"request_id": rid, "label": predicted}).encode(),
                          {"Content-Type": "application/json"})
    assert status == 200 and json.loads(body)["correct"] == 1
    text = agent.metrics.render()
    assert 'path="/v2/models/{name}/infer",code="200"} 1' in text  # the route's template, not the model name: bounded labels


def test_a_version_pinned_request_runs_on_that_version_or_not_at_all(api, samples):
    agent, server = api
    old = agent.model.version
    agent.swap_model(dataclasses.replace(agent.model, version="9.9.9"))  # what an OTA update does
    with pytest.raises(WrongVersion, match=f"version '{old}' is not served; this agent serves version '9.9.9'"):
        agent.predict({"x": samples[:1]}, version=old)
    status, body, _ = raw(server, "POST", f"/v2/models/{agent.model.name}/versions/{old}/infer",
                          json.dumps({"inputs": [{"name": "x", "shape": [1, 1, 8, 8], "datatype": "FP32",
                                                  "data": samples[:1].reshape(-1).tolist()}]}).encode())
    assert status == 404 and "this agent serves version '9.9.9'" in json.loads(body)["error"]
    status, body, _ = raw(server, "POST", f"/v2/models/{agent.model.name}/versions/9.9.9/infer",
                          json.dumps({"inputs": [{"name": "x", "shape": [1, 1, 8, 8], "datatype": "FP32",
                                                  "data": samples[:1].tolist()}]}).encode())  # nested data is fine too
    assert status == 200 and json.loads(body)["model_version"] == "9.9.9"


def test_tritonclient_over_tls_with_a_token(agent, samples, tmp_path):
    from tests.agent.test_auth import self_signed

    cert, key, ctx = self_signed(tmp_path)
    token = "t" * 40
    server = serve(agent, "127.0.0.1", 0, tokens=Tokens([token]), ssl_context=ctx)
    try:
        import ssl

        client = th.InferenceServerClient(f"127.0.0.1:{server.port}", ssl=True,
                                          ssl_context_factory=lambda: ssl.create_default_context(cafile=str(cert)))
        inp = th.InferInput("x", [1, 1, 8, 8], "FP32")
        inp.set_data_from_numpy(samples[:1])
        with pytest.raises(th.InferenceServerException) as e:
            client.infer(agent.model.name, [inp])
        assert e.value.status() == "401" and "Authorization: Bearer" in e.value.message()
        assert client.is_server_live()  # health is open
        result = client.infer(agent.model.name, [inp], headers={"Authorization": f"Bearer {token}"})
        assert result.as_numpy("logits").shape == (1, 10)
        client.close()
    finally:
        server.close()


def test_bool_and_int_tensors_travel_as_binary_and_json(tmp_path):
    """BOOL is one byte per element (0/1), INT64 little-endian; both through the same validator."""
    import onnx
    from onnx import TensorProto, helper

    from tests.agent.agent_helpers import write_model_dir

    g = helper.make_graph([helper.make_node("Cast", ["b"], ["bf"], to=TensorProto.INT64), helper.make_node("Add", ["bf", "k"], ["y"])], "g",
                          [helper.make_tensor_value_info("b", TensorProto.BOOL, ["N", 3]), helper.make_tensor_value_info("k", TensorProto.INT64, ["N", 3])],
                          [helper.make_tensor_value_info("y", TensorProto.INT64, ["N", 3])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    agent = Agent.open(write_model_dir(m, tmp_path / "m"), selftest=False)
    server = serve(agent)
    try:
        b = np.array([[True, False, True]])
        k = np.array([[1, 2, 3]], np.int64)
        client = th.InferenceServerClient(f"127.0.0.1:{server.port}")
        for binary in (True, False):
            ib, ik = th.InferInput("b", [1, 3], "BOOL"), th.InferInput("k", [1, 3], "INT64")
            ib.set_data_from_numpy(b, binary_data=binary)
            ik.set_data_from_numpy(k, binary_data=binary)
            y = client.infer(agent.model.name, [ib, ik], outputs=[th.InferRequestedOutput("y", binary_data=binary)]).as_numpy("y")
            assert y.tolist() == [[2, 2, 4]]
        client.close()
        head = json.dumps({"inputs": [{"name": "b", "shape": [1, 3], "datatype": "BOOL", "parameters": {"binary_data_size": 3}},
                                      {"name": "k", "shape": [1, 3], "datatype": "INT64", "data": [1, 2, 3]}]}).encode()
        status, body, _ = raw(server, "POST", f"/v2/models/{agent.model.name}/infer", head + bytes([1, 2, 0]),
                              {"Inference-Header-Content-Length": str(len(head))})
        assert status == 400 and "BOOL bytes must be 0 or 1" in json.loads(body)["error"]
    finally:
        server.close()


@pytest.mark.parametrize("json_length", [0, 1, 7, 63, 64, 65, 131, 999])
def test_a_binary_body_buffer_puts_the_first_tensor_on_a_64_byte_boundary(json_length):
    from device_agent.serve.connection import aligned_body

    body = aligned_body(json_length + 256, str(json_length))
    assert isinstance(body, memoryview) and len(body) == json_length + 256 and not body.readonly
    body[:] = bytes(range(256)) * ((json_length + 256) // 256) + bytes(range((json_length + 256) % 256))
    x = np.frombuffer(body, np.float32, count=64, offset=json_length)
    assert x.ctypes.data % 64 == 0 and x.flags.aligned


@pytest.mark.parametrize("header", ["", "abc", "-1", "300", "9" * 20, "1e3"])
def test_a_bad_binary_header_length_gets_a_plain_buffer_for_the_parser_to_refuse(header):
    from device_agent.serve.connection import aligned_body

    body = aligned_body(300, header)
    assert isinstance(body, bytearray) and len(body) == 300


def test_a_binary_tensor_reaches_the_model_aligned_and_a_v1_request_with_the_header_still_parses(api, samples, monkeypatch):
    agent, server = api
    seen = []
    predict = agent.predict

    def spy(inputs, **kw):
        seen.append({k: v.ctypes.data % 64 for k, v in inputs.items()})
        return predict(inputs, **kw)

    monkeypatch.setattr(agent, "predict", spy)
    one = samples[:1].tobytes()
    for pad in range(4):  # JSON headers of 4 lengths: the tensor would start at 4 different offsets
        x = {"name": "x", "shape": [1, 1, 8, 8], "datatype": "FP32", "parameters": {"binary_data_size": len(one)}, "pad": "p" * pad}
        head = json.dumps({"inputs": [x]}).encode()
        status, body, _ = raw(server, "POST", f"/v2/models/{agent.model.name}/infer", head + one,
                              {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"})
        assert status == 200, body
    assert seen == [{"x": 0}] * 4
    # the header on a /v1 request changes nothing there
    status, body, _ = raw(server, "POST", "/v1/predict", json.dumps({"inputs": {"x": samples[:1].tolist()}}).encode(),
                          {"Inference-Header-Content-Length": "3", "Content-Type": "application/json"})
    assert status == 200, body
