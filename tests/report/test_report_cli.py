"""`edgekit report`: rows for every model given, output directories expanded, any layout, bad input named."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest
from click.testing import CliRunner

from edgekit.cli.main import cli
from edgekit.report.schema import ROW_KEYS


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_json_rows_for_every_file_given_baseline_first(mlp_set):
    res = run("report", mlp_set["fp32"], mlp_set["fp16"], mlp_set["int8"], "--data", mlp_set["data"], "--json", "--latency-budget", "0.5")
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    assert rep["kind"] == "compare" and rep["baseline"]["file"] == "mlp.onnx"
    assert [r["file"] for r in rep["rows"]] == ["mlp.fp16.onnx", "mlp.int8.onnx"]
    assert rep["runtime"]["threads"] == 1 and rep["runtime"]["batch"] == 1 and "onnxruntime" in rep["runtime"]["versions"]


def test_table_names_every_column_and_the_worst_int8_layer(mlp_set):
    res = CliRunner().invoke(cli, ["report", str(mlp_set["fp32"]), str(mlp_set["int8"]), "--data", str(mlp_set["data"]),
                                   "--latency-budget", "0.5"], terminal_width=220)
    assert res.exit_code == 0, res.output
    for header in ("format", "precision", "size", "gzip", "size ×", "params", "sparsity", "int8 weights", "p50 ms", "p95 ms",
                   "p50 ×", "accuracy", "max err"):
        assert header in res.output
    assert "1 thread" in res.output
    assert "mlp.int8.onnx: layers adding the most int8 error: fc2 (+" in res.output and "--exclude 'fc2'" in res.output


def test_without_data_quality_is_agreement_on_generated_inputs(mlp_set):
    res = run("report", mlp_set["fp32"], mlp_set["int8"], "--json", "--latency-budget", "0.5", "--no-layers")
    rep = json.loads(res.output)
    assert rep["data"]["generated"] is True and rep["quality_metric"] == "cosine"
    assert rep["rows"][0]["accuracy"] is None and rep["rows"][0]["cosine"] > 0.99
    assert rep["layers"] == {}
    assert any("no --data" in n for n in rep["notes"])


def test_output_directory_expands_to_source_and_artifacts(mlp_set, tmp_path):
    model = tmp_path / "mlp.onnx"
    shutil.copy(mlp_set["fp32"], model)
    res = run("compress", "--fp16", model)  # -> tmp/mlp.fp16/ next to the model
    assert res.exit_code == 0, res.output
    rep = json.loads(run("report", tmp_path / "mlp.fp16", "--json", "--latency-budget", "0.5").output)
    assert rep["baseline"]["file"] == "mlp.onnx"  # the source, found next to the directory unchanged
    assert [r["file"] for r in rep["rows"]] == ["mlp.fp16.onnx", "mlp.fp16.ort"]
    assert rep["rows"][1]["params"] == rep["rows"][0]["params"]  # the .ort's weights are its .onnx's
    assert rep["version"] and rep["model"] == "mlp"
    model.write_bytes(b"changed")  # no longer the source the manifest names
    rep = json.loads(run("report", tmp_path / "mlp.fp16", "--json", "--latency-budget", "0.5").output)
    assert rep["baseline"]["file"] == "mlp.fp16.onnx"
    assert rep["notes"][0].startswith("the source model mlp.onnx was not found unchanged next to")


def test_tflite_in_nhwc_is_compared_with_an_nchw_onnx_with_or_without_its_manifest(digits, digits_mobile, tmp_path):
    rep = json.loads(run("report", digits["model"], digits_mobile, "--data", digits["eval"], "--json", "--latency-budget", "1").output)
    rows = {r["file"]: r for r in rep["rows"]}
    assert list(rows) == ["digits.int8.onnx", "digits.int8.ort", "digits.int8.tflite"]
    tfl = rows["digits.int8.tflite"]
    assert tfl["format"] == "tflite" and tfl["precision"] == "int8" and tfl["quantized_share"] == 1.0
    assert tfl["weighted_nodes"] == 5 and tfl["params"] > 40_000
    assert rep["baseline"]["accuracy"] - tfl["accuracy"] <= 1.0 and tfl["agreement"] > 98
    # the same file alone, away from its manifest: its NHWC input is recognised and fed transposed
    loose = tmp_path / "loose.tflite"
    shutil.copy(digits_mobile / "digits.int8.tflite", loose)
    alone = json.loads(run("report", digits["model"], loose, "--data", digits["eval"], "--json", "--latency-budget", "1").output)
    row = alone["rows"][0]
    assert row["precision"] == "int8" and row["accuracy"] == tfl["accuracy"]


def test_bad_input_is_named(mlp_set, tmp_path):
    res = run("report", tmp_path / "missing.onnx")
    assert res.exit_code == 1
    assert res.output.strip() == f"error: not found: {tmp_path / 'missing.onnx'}; pass model files (.onnx, .ort, .tflite) or edgekit output directories"
    res = run("report")
    assert res.exit_code == 2 and "pass at least one model file or output directory" in res.output
    res = run("report", mlp_set["fp32"], "-o", tmp_path / "r.txt")
    assert res.exit_code == 2 and "r.txt: the report is written as .html or .json" in res.output
    other = tmp_path / "other.onnx"
    from tests.conftest import build_mlp

    onnx.save(build_mlp(8, 16, 3), other)
    res = run("report", mlp_set["fp32"], other, "--latency-budget", "0.5")
    assert res.exit_code == 1
    assert res.output.strip() == "error: other.onnx expects input 'x' as [N, 8]; the baseline takes [N, 64]: they are not the same model"
    text = tmp_path / "notes.txt"
    text.write_text("x")
    res = run("report", text)
    assert res.exit_code == 1
    assert res.output.strip() == "error: notes.txt: unknown model format '.txt'; pass .onnx, .ort or .tflite files or an output directory"


def test_json_file_output_and_schema(mlp_set, tmp_path):
    out = tmp_path / "r.json"
    res = run("report", mlp_set["fp32"], mlp_set["fp16"], "-o", out, "--latency-budget", "0.5")
    assert res.exit_code == 0
    assert json.loads(out.read_text())["rows"][0]["file"] == "mlp.fp16.onnx"
    schema = json.loads(run("report", "--schema").output)
    assert schema["$defs"]["Row"]["required"] == list(ROW_KEYS)
    assert schema["properties"]["rows"]["items"] == {"$ref": "#/$defs/Row"}


@pytest.mark.parametrize("bad", ["a different model"])
def test_models_that_are_not_the_same_model_are_refused(mlp_set, tmp_path, bad):
    from tests.conftest import build_mlp

    two_out = tmp_path / "two.onnx"
    m = build_mlp(64, 256, 4)
    m.graph.output.append(onnx.helper.make_tensor_value_info("hr", onnx.TensorProto.FLOAT, ["N", 256]))
    onnx.save(m, two_out)
    res = run("report", mlp_set["fp32"], two_out, "--latency-budget", "0.5")
    assert res.exit_code == 1
    assert res.output.strip() == ("error: two.onnx has 1 input(s) and 2 output(s); the baseline has 1 and 1: they are not the same model")
