"""``compress --recipe``: flags override the recipe, the manifest records the resolved recipe, data needs and gates hold."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from device_agent.contract.manifest import load_manifest
from edgekit.cli.main import cli
from edgekit.compress import CompressOptions, compress_with_recipe
from edgekit.errors import GateError, RecipeError
from edgekit.recipes import Override, load_recipe


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def overridden(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("override") / "out"
    res = run("compress", "--recipe", "int8", "--data", digits["eval"], "--max-drop", "0.5", "--calibration", "entropy",
              "--format", "onnx", "-o", out, digits["model"])
    assert res.exit_code == 0, res.output
    return out


def test_flags_given_with_a_recipe_override_its_values(overridden):
    m = load_manifest(overridden)
    recipe = m.raw["recipe"]
    params = recipe["steps"][0]["int8"]
    assert params["max_drop"] == 0.5 and params["calibration"] == "entropy"
    assert params["mode"] == "static" and params["calib_samples"] == 256  # the recipe's own values stay
    assert recipe["gates"] == {"max_accuracy_drop": 0.5}  # --max-drop bounds the gate too
    assert recipe["export"] == ["onnx"]
    assert recipe["resolved_from"]["overrides"] == {"--format": ["onnx"], "--max-drop": 0.5, "--calibration": "entropy"}
    assert recipe["resolved_from"]["recipe"] == "int8" and len(recipe["resolved_from"]["sha256"]) == 64
    # what ran is what the manifest says ran
    assert m.raw["steps"][0]["params"] == params
    assert [a.format for a in m.artifacts] == ["onnx"]


def test_the_recorded_recipe_reproduces_the_run(overridden, digits, tmp_path):
    recorded = load_manifest(overridden).raw["recipe"]
    again = tmp_path / "resolved.yaml"
    again.write_text(yaml.safe_dump(recorded, sort_keys=False))
    r = load_recipe(again)  # a valid recipe document in its own right
    assert [{s.name: s.params} for s in r.resolved_steps()] == recorded["steps"]
    out = tmp_path / "out"
    res = run("compress", "--recipe", again, "--data", digits["eval"], "-o", out, digits["model"])
    assert res.exit_code == 0, res.output
    m2 = load_manifest(out)
    assert m2.raw["steps"][0]["params"] == recorded["steps"][0]["int8"]
    assert m2.raw["recipe"]["steps"] == recorded["steps"] and m2.raw["recipe"]["gates"] == recorded["gates"]


def test_a_step_flag_with_a_recipe_is_a_usage_error(digits):
    res = run("compress", "--recipe", "int8", "--int8", "--data", digits["eval"], digits["model"])
    assert res.exit_code == 2
    assert "--recipe names the steps itself; drop --int8 (or copy the recipe, edit its steps and pass the copy)" in res.output


def test_a_flag_that_finds_nothing_to_set_is_an_error(digits, tmp_path):
    res = run("compress", "--recipe", "fp16", "--calibration", "entropy", "-o", tmp_path / "o", digits["model"])
    assert res.exit_code == 1
    assert res.output.strip() == ("error: --calibration sets int8's calibration, but recipe 'fp16' has none (fp16 ⇒ onnx); "
                                  "drop --calibration, or use a recipe that has it")
    assert not (tmp_path / "o").exists()


def test_missing_data_fails_before_any_work(digits, tmp_path):
    res = run("compress", "--recipe", "int8", "-o", tmp_path / "o", digits["model"])
    assert res.exit_code == 1
    assert res.output.strip() == (
        "error: recipe 'int8' needs data (static int8 calibrates activation ranges on a few hundred representative inputs): "
        "pass --data FILE (.npz with arrays named after the model's inputs and optional 'labels', a .npy, or a folder of images)")
    assert not (tmp_path / "o").exists()


def _recipe(tmp_path, body: str):
    p = tmp_path / "strict.yaml"
    p.write_text(textwrap.dedent(body).lstrip())
    return p


def test_labels_and_sample_count_are_checked_from_the_file_headers(digits, tmp_path):
    p = _recipe(tmp_path, """
        steps: [int8]
        data: {required: true, labels: true, note: accuracy is judged on labels}
    """)
    res = run("compress", "--recipe", p, "--data", digits["calib"], digits["model"])  # calib.npz: inputs only
    assert res.exit_code == 1
    assert res.output.strip() == ("error: recipe 'strict' needs labelled data (accuracy is judged on labels): calib.npz has no labels; "
                                  "add a 'labels' array of integer class ids")
    p = _recipe(tmp_path, """
        steps: [int8]
        data: {required: true, min_samples: 10000}
    """)
    res = run("compress", "--recipe", p, "--data", digits["calib"], digits["model"])
    n = len(np.load(digits["calib"])["x"])
    assert res.exit_code == 1
    assert res.output.strip() == f"error: recipe 'strict' needs at least 10000 samples; calib.npz has {n}"


def test_a_missed_gate_exits_3_after_writing_and_showing_the_report(digits, tmp_path):
    p = _recipe(tmp_path, """
        name: strict
        steps:
          - int8: {mode: static}
        gates:
          max_size: 1 kB
          max_accuracy_drop: 1.0
    """)
    out = tmp_path / "out"
    res = run("compress", "--recipe", p, "--data", digits["eval"], "-o", out, digits["model"])
    assert res.exit_code == 3
    assert "gate missed" in res.output  # the table and the gates were printed before the error
    line = res.output.strip().splitlines()[-1]
    assert line.startswith("error: 2 gate(s) of recipe 'strict' missed: digits.int8.onnx is ")
    assert ", max_size 1.0 kB; digits.int8.ort is " in line and line.endswith(f"The artifacts were still written to {out}")
    rep = json.loads((out / "report.json").read_text())
    assert rep["gates"]["passed"] is False
    failed = {(r["gate"], r["file"]) for r in rep["gates"]["results"] if not r["ok"]}
    assert failed == {("max_size", "digits.int8.onnx"), ("max_size", "digits.int8.ort")}
    html = (out / "report.html").read_text()
    assert 'id="gates"' in html and ">FAIL<" in html


def test_library_api_applies_overrides_and_raises_on_gates(digits, tmp_path):
    # an override changes what the recipe sets; it does not add gates or steps
    with pytest.raises(RecipeError, match="^--max-size sets the max_size gate, but recipe 'fp16' has none"):
        load_recipe("fp16").with_overrides([Override("--max-size", ("gates.max_size",), 10)])
    assert load_recipe("int8").with_overrides([Override("--max-drop", ("int8.max_drop", "gates.max_accuracy_drop"), 0.3)]).gates \
        .max_accuracy_drop == 0.3
    p = _recipe(tmp_path, """
        name: small
        steps: [fp16]
        export: [onnx]
        gates: {max_size_ratio: 0.1}
    """)
    with pytest.raises(GateError, match=r"1 gate\(s\) of recipe 'small' missed: digits.fp16.onnx size_ratio 0\.5\d*, max_size_ratio 0\.1"):
        compress_with_recipe(digits["model"], None, load_recipe(p), CompressOptions(output=tmp_path / "lib"))
    assert (tmp_path / "lib" / "report.json").is_file()
    assert GateError.exit_code == 3


def test_a_recipe_without_steps_exports_the_model_as_it_is(mlp_model, tmp_path):
    """steps: [] is a plain conversion (and what a whole pipeline, baked preprocessing or a scikit-learn one, runs)."""
    recipe = tmp_path / "convert.yaml"
    recipe.write_text("# export only: fp32 .onnx and .ort, checked against the source\nsteps: []\nexport: [onnx, ort]\n")
    result = compress_with_recipe(mlp_model, None, load_recipe(str(recipe)), CompressOptions(output=tmp_path / "out"))
    m = load_manifest(result.output, verify_files=True)
    assert [(a.format, a.precision) for a in m.artifacts] == [("onnx", "fp32"), ("ort", "fp32")]
    assert m.metrics[m.artifacts[1].file]["parity"]["ok"] and m.raw["recipe"]["steps"] == []
    res = CliRunner().invoke(cli, ["compress", "--recipe", str(recipe), "-o", str(tmp_path / "cli"), str(mlp_model)])
    assert res.exit_code == 0, res.output
