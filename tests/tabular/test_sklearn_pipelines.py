"""scikit-learn pipelines in, whole: every component converted, checked against predict/predict_proba, and bad inputs."""

from __future__ import annotations

import json
import warnings

import joblib
import numpy as np
import pytest
from click.testing import CliRunner

from device_agent.contract.manifest import TensorSpec, load_manifest
from device_agent.runtime import OrtBackend
from device_agent.runtime.model import load_model
from edgekit.cli.main import cli
from edgekit.tabular.convert import convert_pipeline
from edgekit.tabular.table import column_array
from tests.tabular.conftest import CATEGORICAL, NUMERIC, fit, pd, pipeline

COLUMNS = [(c, c in CATEGORICAL) for c in ["island", *NUMERIC[:4], "sex", NUMERIC[4]]]


def _classifiers():
    from lightgbm import LGBMClassifier
    from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from xgboost import XGBClassifier

    return {
        "logistic": (LogisticRegression(max_iter=2000), "standard"),
        "forest": (RandomForestClassifier(60, random_state=0), "standard"),
        "gboost": (GradientBoostingClassifier(n_estimators=40, random_state=0), "minmax"),
        "histgb": (HistGradientBoostingClassifier(max_iter=40, random_state=0), "standard"),
        "mlp": (MLPClassifier((32,), max_iter=2000, random_state=0), "minmax"),
        "lightgbm": (LGBMClassifier(n_estimators=40, verbose=-1, random_state=0), "standard"),
        "xgboost": (XGBClassifier(n_estimators=40, random_state=0), "standard"),
    }


@pytest.mark.parametrize("name", ["logistic", "forest", "gboost", "histgb", "mlp", "lightgbm", "xgboost"])
def test_every_component_matches_scikit_learn_on_held_out_rows_with_missing_values_and_unseen_categories(penguins, tmp_path, name):
    clf, scaler = _classifiers()[name]
    pipe = fit(pipeline(clf, scaler=scaler), penguins["train"], encode_labels=name == "xgboost")
    path = tmp_path / "model.onnx"
    import onnx

    onnx.save(convert_pipeline(pipe, COLUMNS, file="p.joblib"), str(path))
    held = pd.read_csv(penguins["heldout"]).drop(columns=["species"])
    feeds = {c: column_array(held[c], TensorSpec(c, "string" if s else "float64", ("N", 1))) for c, s in COLUMNS}
    got = OrtBackend(path).run(feeds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want_p, want_y = pipe.predict_proba(held), pipe.predict(held)
    assert list(got) == ["probabilities", "label"] and got["probabilities"].dtype == np.float32
    assert (got["label"].astype(str) == np.asarray(want_y).astype(str)).mean() >= 0.999
    assert np.abs(got["probabilities"] - want_p).max() <= 1e-5


def test_compress_a_pipeline_end_to_end_manifest_fields_and_the_agent_loads_it(penguins, tmp_path):
    from sklearn.ensemble import RandomForestClassifier

    pipe = fit(pipeline(RandomForestClassifier(40, random_state=0)), penguins["train"])
    joblib.dump(pipe, tmp_path / "penguins.joblib")
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["compress", "--data", str(penguins["train"]), "--eval-data", str(penguins["heldout"]), "--label", "species",
                                   "-o", str(out), "--json", str(tmp_path / "penguins.joblib")])
    assert res.exit_code == 0, res.output
    m = load_manifest(out)
    assert m.raw["schema_version"] == 2 and m.labels == ("Adelie", "Chinstrap", "Gentoo")
    fields = {f.name: f for f in m.fields}
    assert fields["island"].kind == "categorical" and fields["island"].categories == ("Biscoe", "Dream", "Torgersen")
    assert fields["island"].handle_unknown == "ignore" and fields["sex"].nullable and fields["sex"].imputed
    assert fields["bill_length_mm"].dtype == "float64" and 30 < fields["bill_length_mm"].min < fields["bill_length_mm"].max < 62
    cats = {c["name"]: c for c in m.raw["drift_profile"]["categories"]}
    assert set(cats["island"]["values"]) == {"Biscoe", "Dream", "Torgersen"} and cats["sex"]["null_share"] > 0
    for art in ("penguins.fp32.onnx", "penguins.fp32.ort"):
        parity = m.metrics[art]["origin_parity"]
        assert parity["ok"] and parity["agreement"] >= 99.9 and parity["proba_max_abs_error"] <= 1e-5
        assert m.metrics[art]["accuracy"] > 90
    assert m.metrics["origin"]["kind"] == "scikit-learn" and m.metrics["origin"]["size_bytes"] > 0
    assert "TreeEnsembleClassifier" in (out / "penguins.fp32.required_operators.config").read_text()
    served = load_model(out)
    assert served.selftest.passed, served.selftest.detail
    origin = json.loads(res.output)["origin"]  # the report, as JSON: the pickle in scikit-learn against each artifact
    assert origin["kind"] == "scikit-learn" and origin["file"] == "penguins.joblib" and origin["latency_p50_ms"] > 0
    assert set(origin["artifacts"]) == {"penguins.fp32.onnx", "penguins.fp32.ort"}
    assert all(r["latency_x"] > 0 and r["size_x"] > 0 for r in origin["artifacts"].values())
    assert "Against the original" in (out / "report.html").read_text()


@pytest.mark.parametrize(("case", "message"), [
    ("unsupported", "step 'pre/num/poly' is a PolynomialFeatures, which edgekit does not convert; supported: "),
    ("missing_column", "has no column 'body_mass_g', which penguins.joblib needs; its columns: "),
    ("bad_label", "--label 'kind' names no column of train.csv; its columns: "),
    ("garbage", "penguins.joblib is not a readable pickle"),
])
def test_bad_inputs_are_one_line_and_exit_1(penguins, tmp_path, case, message):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import PolynomialFeatures

    pipe = pipeline(LogisticRegression(max_iter=500))
    if case == "unsupported":
        pipe.steps[0][1].transformers[0][1].steps.insert(1, ("poly", PolynomialFeatures()))
    data = penguins["train"]
    if case == "missing_column":
        data = tmp_path / "train.csv"
        pd.read_csv(penguins["train"]).drop(columns=["body_mass_g"]).to_csv(data, index=False)
    model = tmp_path / "penguins.joblib"
    if case == "garbage":
        model.write_bytes(b"\x80\x04this is not a pickle")
    else:
        joblib.dump(fit(pipe, penguins["train"]), model)
    label = "kind" if case == "bad_label" else "species"
    if case == "bad_label":
        data = tmp_path / "train.csv"
        pd.read_csv(penguins["train"]).to_csv(data, index=False)
    res = CliRunner().invoke(cli, ["compress", "--data", str(data), "--label", label, "-o", str(tmp_path / "out"), str(model)])
    assert res.exit_code == 1, res.output
    assert message in res.output and "Traceback" not in res.output
    assert isinstance(Pipeline, type)


def _int8_record(out) -> dict:
    doc = json.loads((out / "edgekit.json").read_text())
    return next(s for s in doc["steps"] if s["name"] == "int8")["result"]


def test_int8_quantizes_an_mlp_pipelines_linear_layers_and_keeps_its_transformers(penguins, tmp_path):
    """The MLP head is converted in double (scikit-learn's precision); for int8 its layers run in float32 and are quantized."""
    from sklearn.neural_network import MLPClassifier

    pipe = fit(pipeline(MLPClassifier((64, 64), max_iter=2000, random_state=0)), penguins["train"])
    joblib.dump(pipe, tmp_path / "mlp.joblib")
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["compress", "--int8", "--objective", "size", "--format", "onnx", "--data", str(penguins["train"]),
                                   "--label", "species", "-o", str(out), str(tmp_path / "mlp.joblib")])
    assert res.exit_code == 0, res.output
    assert _int8_record(out)["double_linear_as_float"] == 3  # two hidden layers and the output layer
    m = load_manifest(out)
    art = next(a for a in m.artifacts if a.format == "onnx")
    metrics = m.metrics[art.file]
    assert art.precision in ("int8", "mixed") and metrics["size_ratio"] < 0.6, (art.precision, metrics["size_ratio"])
    assert metrics["drop_pts"] <= 1.0
    parity = m.metrics[art.file]["origin_parity"]
    assert parity["agreement"] >= 97.0, parity  # int8 against scikit-learn's own predict


def test_int8_says_a_tree_ensemble_stays_float(penguins, tmp_path):
    from sklearn.ensemble import RandomForestClassifier

    pipe = fit(pipeline(RandomForestClassifier(20, random_state=0)), penguins["train"])
    joblib.dump(pipe, tmp_path / "forest.joblib")
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["compress", "--int8", "--format", "onnx", "--data", str(penguins["train"]), "--label", "species",
                                   "-o", str(out), str(tmp_path / "forest.joblib")])
    assert res.exit_code == 0, res.output
    said = [line for line in res.output.splitlines() if "tree ensemble" in line]
    assert len(said) == 1 and "stay float" in said[0] and "decision nodes" in said[0], res.output
    assert "against forest.joblib in scikit-learn (" in res.output  # the terminal table's line for the original
    assert "stay float" in _int8_record(out)["trees_float"]
