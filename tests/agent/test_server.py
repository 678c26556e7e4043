import http.client
import io
import json
import socket

import numpy as np
import pytest

from device_agent.serve.agent import Agent
from device_agent.serve.server import serve


@pytest.fixture
def api(digits_dir):
    agent = Agent.open(digits_dir, max_batch=64, max_elements=64 * 64)
    server = serve(agent, "127.0.0.1", 0, max_body_bytes=64 * 1024, max_connections=4)
    yield agent, server
    server.close()


@pytest.fixture
def samples(digits):
    return np.load(digits["eval"])["x"][:8]


def request(server, method, path, body=None, headers=None, conn=None):
    c = conn or http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    if conn is None:
        c.close()
    ctype = r.getheader("Content-Type", "")
    return r.status, (json.loads(data) if ctype.startswith("application/json") else data), r


def post_json(server, doc, conn=None, **headers):
    return request(server, "POST", "/v1/predict", json.dumps(doc).encode(), {"Content-Type": "application/json", **headers}, conn)


# --- a tiny JSON-schema checker for the subset the OpenAPI document uses ---------------------------

def check(schema, value, root, where="$"):
    if "$ref" in schema:
        return check(root["components"]["schemas"][schema["$ref"].split("/")[-1]], value, root, where)
    if "anyOf" in schema:
        errors = []
        for s in schema["anyOf"]:
            try:
                return check(s, value, root, where)
            except AssertionError as e:
                errors.append(str(e))
        raise AssertionError(f"{where}: matches none of anyOf: {errors}")
    types = schema.get("type")
    if types:
        types = [types] if isinstance(types, str) else types
        py = {"object": dict, "array": list, "string": str, "integer": int, "number": (int, float), "boolean": bool, "null": type(None)}
        ok = any(isinstance(value, py[t]) and not (t in ("integer", "number") and isinstance(value, bool)) for t in types)
        assert ok, f"{where}: {value!r:.80} is not {types}"
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    if isinstance(value, dict):
        for key in schema.get("required", []):
            assert key in value, f"{where}: missing required {key!r}"
        props = schema.get("properties", {})
        for key, v in value.items():
            if key in props:
                check(props[key], v, root, f"{where}.{key}")
            else:
                assert schema.get("additionalProperties", True) is not False, f"{where}: unexpected key {key!r}"
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            check(schema["items"], v, root, f"{where}[{i}]")


def check_response(doc, path, method, status, body):
    op = doc["paths"][path][method.lower()]
    assert str(status) in op["responses"], f"{method} {path} answered {status}, which the OpenAPI document does not list"
    content = op["responses"][str(status)].get("content", {})
    if "application/json" in content:
        check(content["application/json"]["schema"], body, doc)


# --- tests --------------------------------------------------------------------------------------------

def test_predict_json_batch_matches_in_process(api, samples):
    agent, server = api
    status, body, r = post_json(server, {"inputs": {"x": samples[:3].tolist()}, "top_k": 3, "request_id": "abc"})
    assert status == 200, body
    assert body["request_id"] == "abc" and r.getheader("X-Request-Id") == "abc"
    assert body["model"] == {"name": agent.model.name, "version": agent.model.version}
    assert body["timestamp"].endswith("Z")
    y = np.array(body["outputs"]["logits"], np.float32)
    np.testing.assert_allclose(y, agent.predict({"x": samples[:3]}).outputs["logits"], rtol=1e-6)
    assert len(body["top_k"]) == 3 and all(len(t) == 3 for t in body["top_k"])
    assert [t[0]["index"] for t in body["top_k"]] == y.argmax(axis=1).tolist()


def test_predict_npy_and_npz_bodies_and_npz_answer(api, samples):
    agent, server = api
    buf = io.BytesIO()
    np.save(buf, samples[:2])
    status, body, _ = request(server, "POST", "/v1/predict?top_k=1", buf.getvalue(), {"Content-Type": "application/x-npy"})
    assert status == 200 and len(body["top_k"][0]) == 1
    buf = io.BytesIO()
    np.savez(buf, x=samples[:2])
    status, data, r = request(server, "POST", "/v1/predict", buf.getvalue(), {"Content-Type": "application/x-npz", "Accept": "application/x-npz"})
    assert status == 200 and r.getheader("Content-Type") == "application/x-npz"
    with np.load(io.BytesIO(data)) as z:
        np.testing.assert_allclose(z["logits"], agent.predict({"x": samples[:2]}).outputs["logits"], rtol=1e-6)


def test_curl_style_form_content_type_is_read_as_json(api, samples):
    _, server = api
    body = json.dumps({"inputs": {"x": samples[:1].tolist()}}).encode()
    status, doc, _ = request(server, "POST", "/v1/predict", body, {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200, doc


BAD = [
    ("wrong name", {"inputs": {"y": [[1]]}}, 400, "unknown_input", "unknown input 'y'; the model takes: x (float32 [N, 1, 8, 8])"),
    ("wrong dtype", {"inputs": {"x": [[[["a"] * 8] * 8]]}}, 400, "dtype", "non-numeric values"),
    ("wrong shape", {"inputs": {"x": [[0.0] * 8] * 8}}, 400, "shape", "expects shape [N, 1, 8, 8] (float32); the request gives [8, 8]"),
    ("nan", {"inputs": {"x": [[[[float("nan")] + [0.0] * 7] * 8]]}}, 400, "nonfinite", "8 NaN and 0 infinite value(s) (first at [0, 0, 0, 0])"),
    ("batch too large", {"inputs": {"x": [[[[0.0] * 8] * 8]] * 65}}, 413, "too_large", "batch of 65; this agent accepts at most 64"),
    ("no inputs key", {"x": [1]}, 400, "malformed", 'must be an object with "inputs"'),
    ("unknown key", {"inputs": {}, "topk": 3}, 400, "malformed", "unknown key(s) in the body: topk"),
    ("bad top_k", {"inputs": {}, "top_k": -1}, 400, "malformed", "top_k must be an integer between 0 and 1000"),
    ("request_id with CR/LF", {"inputs": {}, "request_id": "a\r\nSet-Cookie: x=1"}, 400, "malformed",
     "request_id must be 1 to 128 visible ASCII characters"),
    ("request_id too long", {"inputs": {}, "request_id": "r" * 129}, 400, "malformed", "request_id must be 1 to 128"),
]


@pytest.mark.parametrize("what, doc, status, kind, message", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_4xx_with_the_message_and_the_server_keeps_serving(api, samples, what, doc, status, kind, message):
    agent, server = api
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    body = json.dumps(doc, allow_nan=True).encode()
    if len(body) > 64 * 1024:  # the batch case must reach the validator, not the body limit
        buf = io.BytesIO()
        np.savez(buf, x=np.zeros((65, 1, 8, 8), np.float32))
        got, err, _ = request(server, "POST", "/v1/predict", buf.getvalue(), {"Content-Type": "application/x-npz"}, conn)
    else:
        got, err, r = request(server, "POST", "/v1/predict", body, {"Content-Type": "application/json"}, conn)
        assert r.getheader("Set-Cookie") is None  # a caller's request_id never reaches a response header unchecked
    assert got == status, err
    assert err["error"]["kind"] == kind and message in err["error"]["message"]
    before = agent.metrics.snapshot()["predictions"]
    ok, _, _ = post_json(server, {"inputs": {"x": samples[:1].tolist()}}, conn)  # same keep-alive connection still works
    assert ok == 200 and agent.metrics.snapshot()["predictions"] == before + 1
    conn.close()


def test_transport_level_errors(api):
    _, server = api
    status, err, _ = request(server, "POST", "/v1/predict", b"{not json", {"Content-Type": "application/json"})
    assert status == 400 and err["error"]["kind"] == "malformed" and "not valid JSON" in err["error"]["message"]
    status, err, _ = request(server, "POST", "/v1/predict", b"x" * (64 * 1024 + 1), {"Content-Type": "application/json"})
    assert status == 413 and "at most 65,536 ([api] max_body_bytes)" in err["error"]["message"]
    status, err, _ = request(server, "POST", "/v1/predict", b"<x/>", {"Content-Type": "text/xml"})
    assert status == 415 and err["error"]["kind"] == "content_type"
    status, err, _ = request(server, "POST", "/v1/predict", b"garbage", {"Content-Type": "application/x-npy"})
    assert status == 400 and "not a readable .npy array" in err["error"]["message"]
    status, err, _ = request(server, "GET", "/v1/predict")
    assert status == 405 and err["error"]["kind"] == "method_not_allowed"
    status, err, _ = request(server, "GET", "/nope")
    assert status == 404 and "routes:" in err["error"]["message"]
    # no Content-Length at all
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 411")


def test_info_health_ready_metrics(api, samples):
    agent, server = api
    post_json(server, {"inputs": {"x": samples[:2].tolist()}})
    post_json(server, {"inputs": {"y": [1]}})
    status, info, _ = request(server, "GET", "/v1/model")
    assert status == 200 and info["inputs"][0]["shape"] == ["N", 1, 8, 8] and info["selftest"]["passed"]
    assert info["tracked_features"] == ["x[0]"]
    assert request(server, "GET", "/healthz")[1]["status"] == "ok"
    assert request(server, "GET", "/readyz")[0] == 200
    status, text, r = request(server, "GET", "/metrics")
    text = text.decode()
    assert r.getheader("Content-Type").startswith("text/plain; version=0.0.4")
    assert "edgekit_agent_predictions_total 1" in text and "edgekit_agent_prediction_samples_total 2" in text
    assert 'edgekit_agent_errors_total{kind="unknown_input"} 1' in text
    assert 'edgekit_agent_http_requests_total{method="POST",path="/v1/predict",code="400"} 1' in text
    assert f'version="{agent.model.version}"' in text and "edgekit_agent_ready 1" in text


def test_openapi_matches_real_responses(api, samples):
    agent, server = api
    _, doc, _ = request(server, "GET", "/openapi.json")
    assert doc["openapi"].startswith("3.1")
    from device_agent.serve.server import ROUTES

    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == ROUTES
    cases = [
        ("POST", "/v1/predict", {"inputs": {"x": samples[:2].tolist()}}),
        ("POST", "/v1/predict", {"inputs": {"x": [1]}}),
        ("POST", "/v1/predict", {"inputs": {"zz": [1]}}),
        ("GET", "/v1/model", None), ("GET", "/healthz", None), ("GET", "/readyz", None),
    ]
    for method, path, body in cases:
        status, got, _ = request(server, method, path, json.dumps(body).encode() if body else None,
                                 {"Content-Type": "application/json"} if body else {})
        check_response(doc, path, method, status, got)
    check(doc["components"]["schemas"]["PredictRequest"], {"inputs": {"x": [[1.0]]}, "top_k": 2}, doc)
    with pytest.raises(AssertionError):
        check(doc["components"]["schemas"]["PredictRequest"], {"inputs": {"x": [[1.0]]}, "topk": 2}, doc)


def test_not_ready_is_503(digits_dir, samples):
    agent = Agent.open(digits_dir)
    agent._ready_reason = "self-test failed: simulated"
    server = serve(agent, "127.0.0.1", 0)
    try:
        status, doc, _ = request(server, "GET", "/readyz")
        assert status == 503 and doc["reason"] == "self-test failed: simulated"
        status, err, r = post_json(server, {"inputs": {"x": samples[:1].tolist()}})
        assert status == 503 and err["error"]["kind"] == "not_ready" and r.getheader("Retry-After") == "5"
        assert request(server, "GET", "/healthz")[0] == 200  # alive, just not ready
    finally:
        server.close()


def test_at_the_connection_limit_the_longest_idle_connection_makes_room(api, samples):
    """max_connections=4: four idle keep-alive connections never lock a fifth client out; the one idle the
    longest is closed for it (a client that keeps a socket and sends nothing holds no slot for ever)."""
    _, server = api
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(4)]
    try:
        for s in held:  # each completes a request and stays open, idle
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
        status, _, _ = post_json(server, {"inputs": {"x": samples[:1].tolist()}})
        assert status == 200
        try:
            closed = held[0].recv(1) == b""
        except ConnectionResetError:
            closed = True
        assert closed, "the longest idle connection was not the one closed"
        held[3].sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # the others still serve
        assert held[3].recv(65536).startswith(b"HTTP/1.1 200")
        assert server.listener.evicted >= 1
    finally:
        for s in held:
            s.close()


def test_concurrent_clients_get_their_own_answers(api, samples):
    """Several keep-alive clients at once (the server is bounded at 4 connections): every request is
    answered with the outputs for its own input, and every prediction is counted once."""
    from concurrent.futures import ThreadPoolExecutor

    agent, server = api
    expected = agent.predict({"x": samples}).outputs["logits"]
    before = agent.metrics.snapshot()["predictions"]

    def client(i):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            for j in range(20):
                k = (i + j) % len(samples)
                status, body, _ = post_json(server, {"inputs": {"x": samples[k:k + 1].tolist()}, "request_id": f"c{i}-{j}"}, conn)
                assert status == 200 and body["request_id"] == f"c{i}-{j}"
                np.testing.assert_allclose(body["outputs"]["logits"][0], expected[k], rtol=1e-5, atol=1e-5)
        finally:
            conn.close()
        return 20

    with ThreadPoolExecutor(4) as pool:
        assert sum(pool.map(client, range(4))) == 80
    assert agent.metrics.snapshot()["predictions"] == before + 80


def test_json_tensors_round_trip_exactly():
    from device_agent.serve.agent import Prediction, tensor_json

    rng = np.random.default_rng(0)
    for a in (rng.standard_normal((2, 3, 4)).astype(np.float32), rng.standard_normal(5), np.arange(6, dtype=np.int64).reshape(3, 2),
              np.float32(1.5), np.array([[True, False]])):
        back = np.array(json.loads(tensor_json(np.asarray(a))), dtype=np.asarray(a).dtype)
        assert back.shape == np.shape(a) and np.array_equal(back, a)
    assert json.loads(tensor_json(np.array([1.0, np.nan, np.inf], np.float32))) == [1.0, None, None]
    assert json.loads(tensor_json(np.zeros((0, 3), np.float32))) == []  # as json.dumps(a.tolist())
    p = Prediction({"y": np.ones((1, 2), np.float32)}, {"name": "m", "version": "1"}, 'id"x', 0.0, 1.25,
                   scores=np.array([[0.0, 1.0]], np.float32), k=1, labels=("a", "b"))
    doc = json.loads(p.to_json())
    assert doc == {**p.to_dict(), "outputs": {"y": [[1.0, 1.0]]}} and doc["top_k"][0][0]["label"] == "b"


def test_npy_bodies_are_parsed_without_copies_and_checked(api, samples):
    from device_agent.contract.errors import InvalidInput
    from device_agent.serve.bodies import load_npy as _load_npy

    for a in (samples[:2], np.asfortranarray(samples[0, 0]), np.arange(5, dtype=np.int64)):
        buf = io.BytesIO()
        np.save(buf, a)
        got = _load_npy(buf.getvalue())
        assert got.dtype == a.dtype and np.array_equal(got, a)
    buf = io.BytesIO()
    np.save(buf, samples[:2])
    with pytest.raises(InvalidInput, match="data bytes for shape"):
        _load_npy(buf.getvalue()[:-4])
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InvalidInput, match="object arrays are not accepted"):
        _load_npy(buf.getvalue())


@pytest.mark.parametrize("accelerated", [True, False], ids=["orjson", "stdlib"])
def test_json_answers_round_trip_float32_with_and_without_orjson(monkeypatch, accelerated):
    import device_agent.serve.prediction as agent_module
    from device_agent.serve.agent import Prediction

    if accelerated and agent_module._orjson is None:
        pytest.skip("orjson is not installed")
    if not accelerated:
        monkeypatch.setattr(agent_module, "_orjson", None)
    rng = np.random.default_rng(5)
    logits = (rng.standard_normal((2, 1000)) * 3).astype(np.float32)
    logits[0, :6] = [1e-45, 3.4028235e38, -0.0, 0.1, 1e16, -1.1754944e-38]  # subnormal, max, -0, non-representable, huge, min normal
    labels = tuple(f"class {i} — ü" for i in range(1000))
    p = Prediction({"logits": logits, "ids": np.arange(4, dtype=np.int64)}, {"name": "m", "version": "1"}, "r-1", 1.5e9, 3.14159,
                   scores=logits, k=3, labels=labels)
    body = p.to_json()
    doc = json.loads(body)
    back = np.array(doc["outputs"]["logits"], np.float64).astype(np.float32)
    assert np.array_equal(back, logits)
    if accelerated:  # orjson keeps the sign of zero too ("-0.0"); "%.9g" writes "-0", which JSON readers take for 0
        assert np.array_equal(np.signbit(back), np.signbit(logits))
    assert doc["outputs"]["ids"] == [0, 1, 2, 3]
    assert doc["top_k"] == p.top_k and doc["top_k"][0][0]["label"].endswith("ü")
    assert {k: doc[k] for k in ("model", "request_id", "timestamp", "latency_ms")} == \
        {"model": {"name": "m", "version": "1"}, "request_id": "r-1", "timestamp": "2017-07-14T02:40:00.000Z", "latency_ms": 3.1416}
    nan = Prediction({"y": np.array([[1.0, np.nan, -np.inf]], np.float32)}, {"name": "m", "version": "1"}, "r-2", 0.0, 1.0)
    assert json.loads(nan.to_json())["outputs"]["y"] == [[1.0, None, None]]  # NaN/inf are not JSON: null
    if accelerated:  # what orjson does not take (a 0-d tensor, a transposed view) goes the stdlib way, same values
        odd = Prediction({"s": np.float32(2.5) * np.ones((), np.float32), "t": logits[:, :3].T}, {"name": "m", "version": "1"}, "r-3", 0.0, 1.0)
        got = json.loads(odd.to_json())["outputs"]
        assert got["s"] == 2.5 and np.array_equal(np.array(got["t"], np.float32), logits[:, :3].T)


def test_answer_timestamps_are_datetimes_iso_text_to_the_millisecond():
    import datetime as dt
    import random

    from device_agent.serve.prediction import iso_ms

    def reference(ts: float) -> str:
        return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    rng = random.Random(0)
    stamps = [rng.uniform(0, 4e9) for _ in range(20_000)] + [1796654544 + rng.random() * 2 for _ in range(20_000)]
    stamps += [1796654544.9999996, 1796654544.9995, 1796654545.0004999, 0.0, 1e9 + 0.0005]  # rounding at the edges
    assert [iso_ms(t) for t in stamps] == [reference(t) for t in stamps]
