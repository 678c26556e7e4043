"""The shipped ``tabular`` recipe: a pipeline converted whole, no compression steps, gated on accuracy."""

from __future__ import annotations

import json

from click.testing import CliRunner

from device_agent.contract.manifest import load_manifest
from edgekit.cli.main import cli
from edgekit.recipes import load_recipe


def test_the_tabular_recipe_has_no_steps_and_compresses_a_pipeline(penguins, penguins_model, tmp_path):
    recipe = load_recipe("tabular")
    assert recipe.steps == () and recipe.export == ("onnx", "ort")
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["compress", str(penguins_model["pipeline"]), "--recipe", "tabular", "--data", str(penguins["train"]),
                                 "--label", "species", "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    m = load_manifest(out)
    assert sorted(a.file for a in m.artifacts) == ["penguins.fp32.onnx", "penguins.fp32.ort"]
    assert m.raw["recipe"]["name"] == "tabular" and m.raw["recipe"]["steps"] == []
    report = json.loads(r.output)
    assert report["gates"]["passed"] is True, report["gates"]
