"""The report's JSON: golden files for fixed small models, and the documented schema holds for every report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from edgekit.compress import CompressOptions, compress
from edgekit.pipeline import StepSpec
from edgekit.report import compare_report, compress_report, json_schema, to_json
from edgekit.report.schema import LAYER_KEYS, REPORT_KEYS, ROW_KEYS

GOLDEN = Path(__file__).parent / "golden"
#: measured on this CPU at this moment: never in a golden file
VOLATILE_ROW = ("latency_p50_ms", "latency_p95_ms", "latency_ratio")


def normalize(rep: dict) -> dict:
    """The report without what differs run to run (latency, versions, paths, dates); floats to 4 significant digits."""
    rep = json.loads(json.dumps(rep))
    rep["runtime"] = "<runtime>"
    rep["output"] = rep["output"] and "<output>"
    rep["version"] = rep["version"] and "<version>"
    if rep.get("data"):
        rep["data"]["sha256"] = rep["data"]["sha256"] and "<sha256>"
    for row in [rep["baseline"]] + rep["rows"]:
        for k in VOLATILE_ROW:
            row[k] = row[k] if row[k] is None else "<measured>"
        if row["format"] == "ort":  # ORT's converter is not byte-stable: same size, a few bytes differ run to run
            row["gzip_bytes"] = row["gzip_ratio"] = "<ort bytes vary>"
    for s in rep["steps"]:
        (s.get("result") or {}).pop("search", None)  # int8 candidates are chosen by measured latency
    if rep.get("recipe"):
        rep["recipe"]["resolved_from"]["file"] = "<file>"
    return _round(rep)


def _round(x):
    if isinstance(x, float):
        return float(f"{x:.4g}")
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_round(v) for v in x]
    return x


def check_golden(name: str, rep: dict, update: bool) -> None:
    path = GOLDEN / name
    text = to_json(normalize(rep))
    if update or not path.exists():
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        if not update:
            pytest.fail(f"golden file {path.name} did not exist; written now, review and commit it")
        return
    diffs = _diff(json.loads(path.read_text()), json.loads(text))
    assert not diffs, f"report differs from {path} at {diffs[:10]}; if intended: pytest tests/report --update-golden"


#: per-layer error statistics come from onnxruntime's int8 kernels, whose rounding depends on the CPU's instruction set
#: (an AVX2-only machine gives 0.6 % more added error on one layer of this MLP than the one that wrote the golden file):
#: they are compared to 1 %, everything else to 4 significant digits
LAYER_REL_TOL = 0.01


def _diff(old, new, where: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = list(dict.fromkeys(list(old) + list(new)))
        return [d for k in keys for d in _diff(old.get(k, "<missing>"), new.get(k, "<missing>"), f"{where}.{k}")]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new, strict=True)) for d in _diff(a, b, f"{where}[{i}]")]
    if where.startswith(".layers.") and isinstance(old, float) and isinstance(new, float):
        return [] if math.isclose(old, new, rel_tol=LAYER_REL_TOL) else [f"{where}: {old!r} -> {new!r}"]
    return [] if old == new else [f"{where}: {old!r} -> {new!r}"]


@pytest.fixture(scope="module")
def mlp_compare(mlp_set) -> dict:
    return compare_report([mlp_set["fp32"], mlp_set["fp16"], mlp_set["int8"]], data=mlp_set["data"], latency_budget_s=0.3)


def test_compare_report_matches_golden(mlp_compare, update_golden):
    check_golden("compare_mlp.json", mlp_compare, update_golden)


def test_compare_report_measures_what_it_says(mlp_compare, mlp_set):
    rep = mlp_compare
    base, fp16, int8 = rep["baseline"], *rep["rows"]
    assert (base["file"], fp16["file"], int8["file"]) == ("mlp.onnx", "mlp.fp16.onnx", "mlp.int8.onnx")
    assert (base["precision"], fp16["precision"], int8["precision"]) == ("fp32", "fp16", "int8")
    assert rep["quality_metric"] == "accuracy" and rep["data"]["labelled"] and rep["data"]["samples"] == 256
    assert 85 < base["accuracy"] < 95  # labels are the model's answers with 10% flipped
    assert base["drop_pts"] == 0 and base["max_abs_error"] == 0 and base["size_ratio"] == 1
    for row in (fp16, int8):
        assert row["size_bytes"] == Path(mlp_set["fp16" if row is fp16 else "int8"]).stat().st_size
        assert row["size_ratio"] == round(row["size_bytes"] / base["size_bytes"], 4)
        assert 0 < row["gzip_bytes"] < row["size_bytes"]
        assert row["params"] >= base["params"] - 100
        assert row["agreement"] > 95 and abs(row["drop_pts"] - (base["accuracy"] - row["accuracy"])) < 1e-3
        assert row["latency_p50_ms"] > 0 and row["latency_p95_ms"] >= row["latency_p50_ms"]
    assert fp16["max_abs_error"] < 0.01 < int8["max_abs_error"]
    assert int8["quantized_share"] == 1.0 and int8["quantized_nodes"] == int8["weighted_nodes"] == 2
    assert 0.2 < int8["size_ratio"] < 0.35 and 0.45 < fp16["size_ratio"] < 0.55
    layers = rep["layers"]["mlp.int8.onnx"]
    assert layers["reference"] == "mlp.onnx" and layers["samples"] == 128
    assert {e["node"] for e in layers["layers"]} >= {"fc1", "fc2"}


def test_every_report_follows_the_documented_schema(mlp_compare, mlp_set, tmp_path):
    res = compress(mlp_set["fp32"], mlp_set["data"], CompressOptions(steps=[StepSpec("int8", {"max_drop": 5.0, "search_time": 20})],
                                                               output=tmp_path / "o"))
    for rep in (mlp_compare, res.report, json.loads((tmp_path / "o" / "report.json").read_text())):
        assert list(rep) == list(REPORT_KEYS)
        for row in [rep["baseline"]] + rep["rows"]:
            assert list(row) == list(ROW_KEYS)
        for block in rep["layers"].values():
            assert set(block) == {"reference", "samples", "generated_data", "layers"}
            for e in block["layers"]:
                assert list(e) == list(LAYER_KEYS)
    schema = json_schema()
    assert schema["required"] == list(REPORT_KEYS) and schema["$defs"]["Row"]["required"] == list(ROW_KEYS)


def test_compress_report_of_a_fixed_fp16_model_matches_golden(mlp_set, tmp_path, update_golden):
    res = compress(mlp_set["fp32"], mlp_set["data"], CompressOptions(steps=[StepSpec("fp16", {})], output=tmp_path / "fp16", version="1.0.0"))
    rep = res.report
    assert json.loads((tmp_path / "fp16" / "report.json").read_text())["rows"] == rep["rows"]  # written == returned
    assert compress_report(res)["rows"] == rep["rows"]  # built from the result alone, nothing cached on it
    check_golden("compress_mlp_fp16.json", rep, update_golden)
