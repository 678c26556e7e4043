"""Every way a recipe can be wrong, and the exact message that says where and how to fix it."""

from __future__ import annotations

import textwrap

import pytest
from click.testing import CliRunner

from edgekit.cli.main import cli
from edgekit.errors import RecipeError
from edgekit.recipes import load_recipe

CASES = {
    "unknown step, nearest name": (
        """
        name: mine
        steps:
          - int8: {max_drop: 1.0}
          - int9
        """,
        "unknown step 'int9' in my.yaml:4 (step 2); did you mean 'int8'? Known steps: distill, fp16, int8, prune",
    ),
    "unknown step, nothing near": (
        "steps: [zzzzzz]\n",
        "unknown step 'zzzzzz' in my.yaml:1 (step 1). Known steps: distill, fp16, int8, prune",
    ),
    "unknown field of a step": (
        """
        steps:
          - int8:
              max_dorp: 1.0
        """,
        "unknown field 'max_dorp' in my.yaml:3 (step 1, int8); did you mean 'max_drop'? Allowed: calibration, max_drop, "
        "search_time, exclude, candidates, calib_samples, mode",
    ),
    "enum value": (
        """
        steps:
          - int8:
              calibration: minimax
        """,
        "invalid value 'minimax' for 'calibration' in my.yaml:3 (step 1, int8); allowed: minmax, entropy, percentile; "
        "did you mean 'minmax'?",
    ),
    "pattern value lists its alternatives": (
        """
        steps:
          - int8:
              mode: statik
        """,
        "invalid value 'statik' for 'mode' in my.yaml:3 (step 1, int8); allowed: auto, static, dynamic; did you mean 'static'?",
    ),
    "number out of range": (
        """
        steps:
          - int8:
              max_drop: -1
        """,
        "invalid value -1 for 'max_drop' in my.yaml:3 (step 1, int8): input should be greater than or equal to 0. "
        "max_drop: Largest accepted accuracy drop",
    ),
    "wrong type inside a list": (
        """
        steps:
          - int8:
              exclude: [a, {b: 1}]
        """,
        "invalid value {'b': 1} for 'exclude[1]' in my.yaml:3 (step 1, int8): input should be a valid string",
    ),
    "step params not a mapping": (
        """
        steps:
          - int8: [1, 2]
        """,
        "parameters of step 1 (int8) in my.yaml:2 must be a mapping of field: value, got a list [1, 2]",
    ),
    "two steps in one item": (
        """
        steps:
          - int8: {}
            fp16: {}
        """,
        "step 1 in my.yaml:2 has 2 keys (int8, fp16); write one step per list item, e.g. '- int8: {max_drop: 1.0}'",
    ),
    "step after quantization": (
        """
        steps:
          - int8
          - prune: {ratio: 0.5}
        """,
        "step 'prune' in my.yaml:3 (step 2) comes after 'int8' (step 1); quantization must be the last step: move 'prune' before 'int8'",
    ),
    "two precisions": (
        "steps: [int8, fp16]\n",
        "step 'fp16' in my.yaml:1 (step 2): the recipe already quantizes with 'int8' (step 1); a model gets one precision, "
        "keep one of 'int8' and 'fp16'",
    ),
    "unknown top-level key": (
        """
        step: [int8]
        """,
        "unknown key 'step' in my.yaml:1 (recipe); did you mean 'steps'? Allowed: name, description, steps, export, objective, data, gates, "
        "resolved_from",
    ),
    "missing steps": (
        "name: x\n",
        "my.yaml:1: missing 'steps', the list of steps to run",
    ),
    "steps not a list": (
        "steps: int8\n",
        "invalid steps in my.yaml:1 (recipe): expected a list of steps, got text 'int8'",
    ),
    "unknown gate": (
        """
        steps: [fp16]
        gates:
          max_sise: 2 MB
        """,
        "unknown field 'max_sise' in my.yaml:3 (gates); did you mean 'max_size'? Allowed: max_accuracy_drop, max_size, "
        "max_size_ratio, max_latency_ms, max_latency_ratio",
    ),
    "bad size": (
        """
        steps: [fp16]
        gates:
          max_size: two MB
        """,
        "invalid value 'two MB' for 'max_size' in my.yaml:3 (gates): 'two MB' is not a size; write bytes or a number with a unit, "
        "e.g. 512 kB, 2 MB, 1.5 MiB",
    ),
    "unknown data key": (
        """
        steps: [fp16]
        data:
          requird: true
        """,
        "unknown field 'requird' in my.yaml:3 (data); did you mean 'required'? Allowed: required, labels, min_samples, note",
    ),
    "section not a mapping": (
        """
        steps: [fp16]
        gates: 3
        """,
        "invalid gates in my.yaml:2 (gates): expected a mapping of field: value, got a number 3. Allowed fields: max_accuracy_drop",
    ),
    "unknown export format": (
        """
        steps: [int8]
        export: [onnx, tflit]
        """,
        "unknown export format 'tflit' in my.yaml:2 (export); did you mean 'tflite'? Allowed: onnx, ort, tflite",
    ),
    "export listed twice": (
        """
        steps: [int8]
        export:
          - onnx
          - onnx
        """,
        "export format 'onnx' in my.yaml:4 (export) is listed twice; keep one",
    ),
    "duplicate key": (
        """
        steps: [int8]
        steps: [fp16]
        """,
        "duplicate key 'steps' in my.yaml:2 (first at line 1); keep one",
    ),
    "YAML syntax": (
        """
        steps:
          - int8: {a: 1
        """,
        "my.yaml:3:1: not valid YAML: expected ',' or '}', but got '<stream end>'",
    ),
    "not a mapping": (
        "- int8\n",
        "my.yaml:1: a recipe is a mapping with 'steps' (and optionally name, description, export, objective, data, gates, resolved_from); got a list",
    ),
    "empty file": (
        "# only a comment\n",
        "my.yaml is empty; a recipe needs at least 'steps'",
    ),
    "bad name": (
        """
        name: my recipe!
        steps: [fp16]
        """,
        "invalid name 'my recipe!' in my.yaml:1 (recipe): use letters, digits, '.', '_' and '-'",
    ),
    "description not text": (
        """
        description: [a]
        steps: [fp16]
        """,
        "invalid description in my.yaml:1 (recipe): expected text, got a list ['a']",
    ),
    "prune field from the prune step's own config": (
        """
        steps:
          - prune:
              ratio: 1.5
          - int8
        """,
        "invalid value 1.5 for 'ratio' in my.yaml:3 (step 1, prune): input should be less than 1",
    ),
}


def _write(tmp_path, text: str):
    p = tmp_path / "my.yaml"
    p.write_text(textwrap.dedent(text).lstrip("\n"))
    return p


@pytest.mark.parametrize("text, message", list(CASES.values()), ids=list(CASES))
def test_recipe_error_names_file_line_step_and_field(tmp_path, monkeypatch, text, message):
    monkeypatch.chdir(tmp_path)  # messages name the file as given
    _write(tmp_path, text)
    with pytest.raises(RecipeError) as e:
        load_recipe("my.yaml")
    assert str(e.value).startswith(message), str(e.value)


def test_check_command_exits_1_with_the_same_one_line_message(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text, message = CASES["unknown step, nearest name"]
    _write(tmp_path, text)
    res = CliRunner().invoke(cli, ["recipes", "check", "my.yaml"])
    assert res.exit_code == 1
    assert res.output.strip() == f"error: {message}"


def test_unknown_shipped_name_suggests_the_nearest_and_lists_all():
    with pytest.raises(RecipeError) as e:
        load_recipe("int8-mobil")
    assert str(e.value) == ("no shipped recipe named 'int8-mobil'; did you mean 'int8-mobile'? Shipped: fp16, int8, int8-dynamic, "
                            "int8-mobile, prune50-distill-int8, tabular, tiny. Or pass a path to a recipe .yaml file")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(RecipeError, match=r"^recipe file not found: .*nope\.yaml$"):
        load_recipe(str(tmp_path / "nope.yaml"))
    with pytest.raises(RecipeError, match="is a directory; pass a recipe .yaml file"):
        load_recipe(str(tmp_path) + "/")
