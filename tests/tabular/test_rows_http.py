"""Raw table rows over HTTP: a real agent serving a compressed scikit-learn pipeline, validated field by field."""

from __future__ import annotations

import json
import shutil
import warnings

import joblib
import pytest

from device_agent.serve.agent import Agent
from device_agent.serve.server import serve
from tests.agent.test_server import check_response, post_json, request
from tests.tabular.conftest import pd

ROW = {"island": "Dream", "bill_length_mm": 41.1, "bill_depth_mm": 18.0, "flipper_length_mm": 190.0, "body_mass_g": 3500.0, "sex": None,
       "year": 2008}


@pytest.fixture
def api(penguins_model):
    agent = Agent.open(penguins_model["dir"], max_batch=64, out_of_range="reject")
    server = serve(agent, "127.0.0.1", 0)
    yield agent, server
    server.close()


def _rows(path, n=None):
    held = pd.read_csv(path).drop(columns=["species"])
    held = held.astype(object).where(held.notna(), None)
    rows = held.to_dict(orient="records")
    return rows[:n] if n else rows


def _openapi(server):
    return request(server, "GET", "/openapi.json")[1]


def test_instances_and_columns_answer_as_the_pipeline_does_on_held_out_rows(penguins, penguins_model):
    server = serve(Agent.open(penguins_model["dir"]), "127.0.0.1", 0)  # out_of_range = warn (the default): a few held-out values are
    try:                                                                 # outside the training range
        _held_out_rows(server, penguins, penguins_model)
    finally:
        server.close()


def _held_out_rows(server, penguins, penguins_model):
    rows = _rows(penguins["heldout"], 60)  # an unseen island, missing values among them
    status, body, _ = post_json(server, {"instances": rows})
    assert status == 200, body
    held = pd.read_csv(penguins["heldout"]).drop(columns=["species"]).iloc[:60]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = joblib.load(penguins_model["pipeline"]).predict(held).tolist()
    assert body["outputs"]["label"] == want
    assert [t[0]["label"] for t in body["top_k"]] == want
    columns = {k: [r[k] for r in rows] for k in rows[0]}
    status, body2, _ = post_json(server, {"inputs": columns})
    assert status == 200 and body2["outputs"] == body["outputs"]
    check_response(_openapi(server), "/v1/predict", "POST", 200, body)


@pytest.mark.parametrize(("change", "kind", "row", "field", "words"), [
    ({"drop": "sex"}, "missing_field", 1, "sex", "row 1 is missing field 'sex', a string (known: 'female', 'male') or null (send null"),
    ({"bill_depth_mm": "18.0"}, "field_type", 1, "bill_depth_mm", "row 1, field 'bill_depth_mm': '18.0' is a string; allowed: a number"),
    ({"island": 3}, "field_type", 1, "island", "row 1, field 'island': 3 is an integer; allowed: a string (known: 'Biscoe', 'Dream'"),
    ({"sex": True}, "field_type", 1, "sex", "row 1, field 'sex': True is a boolean"),
    ({"body_mass_g": 90000}, "out_of_range", 1, "body_mass_g",
     "row 1, field 'body_mass_g': 90000 is outside the training range [2850, 6300]; this agent refuses such values ([serve] out_of_range = reject"),
    ({"colour": "blue"}, "unknown_field", 1, "colour", "row 1 has unknown field 'colour'; the model's fields: island, bill_length_mm"),
])
def test_a_bad_row_is_a_400_naming_row_field_value_and_what_is_allowed(api, change, kind, row, field, words):
    agent, server = api
    bad = {k: v for k, v in ROW.items() if k != change.get("drop")} | {k: v for k, v in change.items() if k != "drop"}
    status, body, _ = post_json(server, {"instances": [ROW, bad]})
    assert status == 400, body
    err = body["error"]
    assert (err["kind"], err["row"], err["input"]) == (kind, row, field)
    assert words in err["message"]
    check_response(_openapi(server), "/v1/predict", "POST", 400, body)
    assert agent.metrics.snapshot()["errors"][kind] == 1


def test_the_columns_form_names_the_row_too(api):
    _, server = api
    columns = {k: [v, v] for k, v in ROW.items()} | {"flipper_length_mm": [190.0, "long"]}
    status, body, _ = post_json(server, {"inputs": columns})
    assert status == 400 and body["error"]["row"] == 1 and body["error"]["input"] == "flipper_length_mm"
    assert "row 1, field 'flipper_length_mm': 'long' is a string" in body["error"]["message"]


def test_unseen_category_is_served_and_counted_when_the_encoder_ignores_unknowns(api):
    _, server = api
    status, body, _ = post_json(server, {"instances": [ROW | {"island": "Atlantis"}, ROW | {"island": "Atlantis"}, ROW]})
    assert status == 200, body
    metrics = request(server, "GET", "/metrics")[1].decode()
    assert 'edgekit_agent_field_unseen_category_total{field="island"} 2' in metrics


def _edited(src, tmp_path, edit):
    """A copy of the model whose manifest fields say otherwise (the encoder refusing unknowns, a column not imputed)."""
    out = tmp_path / "model"
    shutil.copytree(src, out)
    doc = json.loads((out / "edgekit.json").read_text())
    for f in doc["signature"]["fields"]:
        edit(f)
    (out / "edgekit.json").write_text(json.dumps(doc))
    return out


def test_unseen_category_is_refused_when_the_encoder_raises_and_null_where_not_imputed(penguins_model, tmp_path):
    def edit(f):
        if f["name"] == "island":
            f["handle_unknown"] = "error"
        if f["name"] == "year":
            f["nullable"] = f["imputed"] = False
    agent = Agent.open(_edited(penguins_model["dir"], tmp_path, edit))
    server = serve(agent, "127.0.0.1", 0)
    try:
        status, body, _ = post_json(server, {"instances": [ROW, ROW, ROW | {"island": "Atlantis"}]})
        assert status == 400 and body["error"]["kind"] == "unknown_category" and body["error"]["row"] == 2
        assert body["error"]["message"] == ("row 2, field 'island': 'Atlantis' is not a category this model knows; allowed: one of 'Biscoe', "
                                            "'Dream', 'Torgersen' or null (its encoder has handle_unknown='error')")
        status, body, _ = post_json(server, {"instances": [ROW | {"year": None}]})
        assert status == 400 and body["error"]["kind"] == "null" and body["error"]["row"] == 0
        assert "row 0, field 'year' is null, but the pipeline does not impute it; send a number (training range [2007, 2009])" in body["error"]["message"]
        status, body, _ = post_json(server, {"instances": [ROW | {"sex": None}]})  # imputed: null is fine
        assert status == 200, body
    finally:
        server.close()


def test_out_of_range_warn_serves_and_counts(penguins_model):
    agent = Agent.open(penguins_model["dir"])  # out_of_range = warn, the default
    server = serve(agent, "127.0.0.1", 0)
    try:
        status, body, _ = post_json(server, {"instances": [ROW | {"body_mass_g": 90000}, ROW | {"bill_length_mm": 1.0}, ROW]})
        assert status == 200, body
        metrics = request(server, "GET", "/metrics")[1].decode()
        assert 'edgekit_agent_field_out_of_range_total{field="body_mass_g"} 1' in metrics
        assert 'edgekit_agent_field_out_of_range_total{field="bill_length_mm"} 1' in metrics
    finally:
        server.close()


def test_too_many_rows_is_a_413_and_an_empty_request_a_400(api):
    _, server = api
    status, body, _ = post_json(server, {"instances": [ROW] * 65})
    assert status == 413 and "the request holds 65 rows; this agent accepts at most 64 ([api] max_batch)" in body["error"]["message"]
    status, body, _ = post_json(server, {"instances": []})
    assert status == 400 and body["error"]["message"] == "the request holds no rows; send at least one"
    status, body, _ = post_json(server, {"instances": [ROW], "inputs": {}})
    assert status == 400 and "unknown key(s) in the body: instances" in body["error"]["message"]


def test_the_openapi_document_describes_each_field(api):
    _, server = api
    doc = _openapi(server)
    req = doc["components"]["schemas"]["PredictRequest"]
    row = req["anyOf"][0]["properties"]["instances"]["items"]
    assert row["required"] == list(ROW) and row["additionalProperties"] is False
    assert row["properties"]["bill_length_mm"]["type"] == ["number", "null"] and "Training range [" in row["properties"]["bill_length_mm"]["description"]
    assert row["properties"]["island"]["examples"] == ["Biscoe", "Dream", "Torgersen"]
    example = doc["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["application/json"]["example"]
    status, body, _ = post_json(server, example)
    assert status == 200, body


def test_npz_answers_hold_plain_strings_and_v2_points_to_v1(api):
    import io

    import numpy as np

    _, server = api
    status, body, _ = post_json(server, {"instances": [ROW]}, Accept="application/x-npz")
    assert status == 200
    with np.load(io.BytesIO(body)) as z:  # allow_pickle=False: the labels are unicode, not objects
        assert z["label"].dtype.kind == "U" and z["label"].tolist() in (["Adelie"], ["Chinstrap"], ["Gentoo"])
    status, meta, _ = request(server, "GET", "/v2/models/penguins")
    assert status == 200 and meta["inputs"][0] == {"name": "island", "datatype": "BYTES", "shape": [-1, 1]}
    doc = {"inputs": [{"name": "island", "shape": [1, 1], "datatype": "BYTES", "data": ["Dream"]}]}
    status, err, _ = request(server, "POST", "/v2/models/penguins/infer", json.dumps(doc).encode(), {"Content-Type": "application/json"})
    assert status == 400 and err["error"].startswith("model 'penguins' takes table rows, validated by field: POST /v1/predict with")


def test_the_daemon_takes_out_of_range_from_agent_toml(penguins_model, tmp_path):
    from device_agent.config import parse_config
    from device_agent.contract.errors import InvalidInput
    from device_agent.daemon import Daemon

    cfg = parse_config({"device": {"id": "till-1"}, "broker": {"url": ""}, "model": {"path": str(penguins_model["dir"])},
                        "api": {"enabled": False}, "serve": {"out_of_range": "reject"}, "state_dir": str(tmp_path)},
                       base_dir=tmp_path, check_files=False)
    agent = Daemon.from_config(cfg).agent
    with pytest.raises(InvalidInput, match=r"row 0, field 'year': 2030 is outside the training range \[2007, 2009\]"):
        agent.predict({k: [v] for k, v in (ROW | {"year": 2030}).items()})
