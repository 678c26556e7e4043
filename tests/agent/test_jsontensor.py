"""Large JSON tensors parsed straight into arrays (simdjson): the same documents, values and errors as orjson + numpy.

Every check compares the fast path with the usual one (orjson, then ``np.asarray`` of the lists), on
bodies large enough to take it (>= 256 kB). Where the fast path gives an array, the usual path must give
lists that numpy packs into the same dtype and the same values; where numpy refuses (ragged rows,
strings among numbers) the fast path must not give an array, so the validator names the problem as before.
"""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device_agent.serve import jsonbody, jsontensor
from device_agent.serve.jsonbody import DENSE_CHECK_BYTES, loads
from device_agent.serve.jsontensor import parse_tensors
from tests.agent.test_http_limits import post

pytestmark = pytest.mark.skipif(not jsontensor.available(), reason="pysimdjson is an agent dependency: pip install pysimdjson")


def _pad(doc: dict) -> bytes:
    """``doc`` as JSON, padded past the size from which large bodies are checked (and may take the fast path)."""
    body = json.dumps(doc).encode()
    return body if len(body) >= DENSE_CHECK_BYTES else json.dumps({**doc, "pad": "p" * (DENSE_CHECK_BYTES - len(body))}).encode()


def _fast(body: bytes) -> object | None:
    return parse_tensors(body, jsonbody._check_density(body))


def _same(fast: object, usual: object) -> None:
    """``fast`` is ``usual`` with some numeric lists packed as numpy would pack them."""
    if isinstance(fast, np.ndarray):
        packed = np.asarray(usual)
        assert fast.dtype == packed.dtype and fast.shape == packed.shape and np.array_equal(fast, packed)
        assert np.array_equal(np.signbit(fast), np.signbit(packed))  # -0.0 stays -0.0
        return
    assert type(fast) is type(usual)
    if isinstance(fast, dict):
        assert list(fast) == list(usual)  # type: ignore[arg-type]
        for k in fast:
            _same(fast[k], usual[k])  # type: ignore[index]
    elif isinstance(fast, list):
        assert len(fast) == len(usual)  # type: ignore[arg-type]
        for a, b in zip(fast, usual, strict=True):  # type: ignore[call-overload]
            _same(a, b)
    else:
        assert fast == usual


def test_an_image_tensor_becomes_float64_with_the_values_numpy_packs_from_the_lists():
    x = np.random.default_rng(0).standard_normal((1, 3, 100, 100)).astype(np.float32)
    x[0, 0, 0, :3] = [-0.0, 3.4028235e38, 1e-45]  # signed zero, float32's largest and its smallest subnormal
    body = json.dumps({"inputs": {"x": x.tolist()}, "top_k": 3, "request_id": "r-1"}).encode()
    doc = loads(body, tensors=True)
    assert isinstance(doc, dict) and isinstance(doc["inputs"]["x"], np.ndarray) and doc["inputs"]["x"].dtype == np.float64
    _same(doc, loads(body))
    assert np.array_equal(doc["inputs"]["x"].astype(np.float32), x)


def test_integers_become_int64_and_an_integer_first_tensor_with_floats_float64():
    pixels = np.random.default_rng(1).integers(0, 256, (1, 3, 120, 120))
    body = _pad({"inputs": {"x": pixels.tolist()}})
    doc = loads(body, tensors=True)
    assert doc["inputs"]["x"].dtype == np.int64 and np.array_equal(doc["inputs"]["x"], pixels)  # type: ignore[index]
    mixed = pixels.tolist()
    mixed[0][2][119][119] = 0.5  # the last number: a float
    body = _pad({"inputs": {"x": mixed}})
    doc = loads(body, tensors=True)
    assert doc["inputs"]["x"].dtype == np.float64  # type: ignore[index]
    _same(doc, loads(body))


def test_a_v2_request_gets_its_data_as_an_array_and_keeps_its_small_lists():
    data = np.random.default_rng(2).standard_normal(3 * 96 * 96).tolist()
    body = _pad({"id": "a", "inputs": [{"name": "x", "shape": [1, 3, 96, 96], "datatype": "FP32", "data": data}],
                 "outputs": [{"name": "y", "parameters": {"binary_data": False}}]})
    doc = loads(body, tensors=True)
    item = doc["inputs"][0]  # type: ignore[index]
    assert isinstance(item["data"], np.ndarray) and item["shape"] == [1, 3, 96, 96] and isinstance(item["shape"], list)
    _same(doc, loads(body))


def _rows(n: int = 600, width: int = 40) -> list:
    return np.random.default_rng(3).standard_normal((n, width)).round(6).tolist()


@pytest.mark.parametrize("case", ["short row", "long row", "number for a row", "list hidden in a row", "object in a row",
                                  "string in a row", "null in a row", "bool in a row", "integer beyond int64", "row of rows"])
def test_what_numpy_refuses_never_becomes_an_array(case):
    rows = _rows()
    ints = [[int(v * 1000) for v in r] for r in rows]
    tensor: list = {"integer beyond int64": ints}.get(case, rows)
    row = tensor[300]
    if case == "short row":
        row.pop()
    elif case == "long row":
        row.append(1.0)
    elif case == "number for a row":
        tensor[300] = 1.0
    elif case == "list hidden in a row":  # same row length and same count of numbers: only the brackets tell
        row[5] = [row[5]]
    elif case == "object in a row":
        row[5] = {}
    elif case == "string in a row":
        row[5] = "1.5"
    elif case == "null in a row":
        row[5] = None
    elif case == "bool in a row":
        row[5] = True
    elif case == "integer beyond int64":
        row[5] = 2**63
    elif case == "row of rows":
        tensor[300] = [row] * 40
    body = _pad({"inputs": {"x": tensor}})
    assert _fast(body) is None
    assert loads(body, tensors=True) == loads(body)  # the usual path's lists: the validator names the problem


def test_brackets_in_strings_repeated_keys_and_nan_take_the_usual_path_with_its_answer():
    rows = _rows()
    for doc in ({"inputs": {"x": rows}, "request_id": "[{"}, {"inputs": {"x": rows}, "top_k": 1}):
        body = _pad(doc)
        assert _fast(body) is None if "request_id" in doc else isinstance(_fast(body)["inputs"]["x"], np.ndarray)  # type: ignore[index]
    body = json.dumps({"inputs": {"x": rows}}).encode()[:-1] + b', "inputs": {"x": [[1.5]]}}'  # a repeated key: the last wins
    assert _fast(body) is None and loads(body, tensors=True) == loads(body) == {"inputs": {"x": [[1.5]]}}
    nan = json.dumps({"inputs": {"x": [[float("nan")] * 40] * 600}}).encode()  # not JSON, but Python writes it
    assert _fast(nan) is None and np.isnan(np.asarray(loads(nan, tensors=True)["inputs"]["x"])).all()  # type: ignore[index]


def test_deep_nesting_and_many_small_containers_take_the_usual_path():
    rows = _rows()
    deep: object = rows
    for _ in range(70):
        deep = [deep]
    assert _fast(_pad({"inputs": {"x": deep}})) is None
    objects: object = {"inputs": {"x": rows}}
    for _ in range(70):
        objects = {"a": objects}
    assert _fast(_pad(objects)) is None  # type: ignore[arg-type]
    table = _pad({"inputs": {"x": rows}, "meta": [{"a": 1}] * 10_000})  # 20,000 items walked in Python: orjson reads it faster
    assert _fast(table) is None and isinstance(_fast(_pad({"inputs": {"x": rows}, "meta": [{"a": 1}] * 1_000})), dict)


def test_small_arrays_stay_lists_and_without_simdjson_everything_does(monkeypatch):
    body = _pad({"inputs": {"x": _rows(), "small": [[1.0] * 10] * 10}})
    doc = loads(body, tensors=True)
    assert isinstance(doc["inputs"]["x"], np.ndarray) and isinstance(doc["inputs"]["small"], list)  # type: ignore[index]
    monkeypatch.setattr(jsontensor, "_simdjson", None)
    assert not jsontensor.available() and loads(body, tensors=True) == loads(body)


_leaf = st.one_of(st.floats(allow_nan=False, allow_infinity=False, width=64), st.integers(-(2**63), 2**63 - 1),
                  st.integers(2**63, 2**64 - 1), st.booleans(), st.none(), st.just("7"), st.just([1.0]), st.just([]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(rows=st.integers(30, 80), width=st.integers(20, 60), ints=st.booleans(), edits=st.lists(
    st.tuples(st.integers(0, 10_000), st.integers(0, 10_000), st.sampled_from(["set", "drop", "add"]), _leaf), max_size=3))
def test_any_edit_of_a_tensor_gives_what_orjson_and_numpy_give(rows, width, ints, edits):
    rng = np.random.default_rng(rows * 100 + width)
    base = rng.integers(-1000, 1000, (rows, width)) if ints else rng.standard_normal((rows, width))
    tensor = base.tolist()
    for r, c, op, leaf in edits:
        row = tensor[r % rows]
        if op == "set":
            row[c % width] = leaf
        elif op == "drop" and len(row) > 1:
            row.pop()
        elif op == "add":
            row.append(leaf)
    body = _pad({"inputs": {"x": tensor}})
    fast, usual = _fast(body), loads(body)
    if fast is None or not isinstance(fast["inputs"]["x"], np.ndarray):  # type: ignore[index]
        assert fast is None or fast == usual  # lists (too few numbers for an array): orjson's very lists
        return
    try:
        packed = np.asarray(usual["inputs"]["x"])  # type: ignore[index]
    except (ValueError, TypeError, OverflowError):
        pytest.fail(f"numpy refuses the lists, yet the fast path made an array: {edits}")
    assert packed.dtype != object, edits
    _same(fast, usual)


# --- through the agent ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def image_agent(tmp_path_factory):
    """A model over a 3x96x96 image: y[N, 3] = the mean of each channel."""
    from onnx import TensorProto, helper

    from device_agent.serve.agent import Agent
    from tests.agent.agent_helpers import write_model_dir

    g = helper.make_graph([helper.make_node("ReduceMean", ["x"], ["y"], axes=[2, 3], keepdims=0)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 96, 96])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return Agent.open(write_model_dir(m, tmp_path_factory.mktemp("img") / "m", name="img"), selftest=False)


@pytest.mark.parametrize("accelerated", [True, False], ids=["simdjson", "orjson"])
def test_v1_and_v2_json_answers_and_errors_are_the_same_with_and_without_simdjson(image_agent, monkeypatch, accelerated):
    from device_agent.serve.server import serve

    if not accelerated:
        monkeypatch.setattr(jsontensor, "_simdjson", None)
    x = np.random.default_rng(4).standard_normal((2, 3, 96, 96)).astype(np.float32)
    want = x.mean(axis=(2, 3))
    v2 = "/v2/models/img/infer"
    v2_doc = {"inputs": [{"name": "x", "shape": [2, 3, 96, 96], "datatype": "FP32", "data": x.ravel().tolist()}]}
    ragged = x.tolist()
    ragged[1][2][50].pop()
    server = serve(image_agent)
    try:
        status, doc, _ = post(server.port, json.dumps({"inputs": {"x": x.tolist()}}).encode())
        assert status == 200 and np.allclose(doc["outputs"]["y"], want, atol=1e-6)
        status, doc, _ = post(server.port, json.dumps(v2_doc).encode(), path=v2)
        assert status == 200 and np.allclose(np.reshape(doc["outputs"][0]["data"], (2, 3)), want, atol=1e-6)
        status, doc, _ = post(server.port, json.dumps({"inputs": {"x": ragged}}).encode())
        assert status == 400 and doc["error"]["kind"] == "shape" and "ragged nested list" in doc["error"]["message"], doc
        status, doc, _ = post(server.port, json.dumps({"inputs": [{**v2_doc["inputs"][0], "data": ragged}]}).encode(), path=v2)
        assert status == 400 and "rows of one length" in doc["error"], doc
        v2_doc["inputs"][0]["data"][7] = "0.5"
        status, doc, _ = post(server.port, json.dumps(v2_doc).encode(), path=v2)
        assert status == 400 and "non-numeric" in doc["error"], doc
    finally:
        server.close()
