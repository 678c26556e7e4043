"""The typed seams: CompressOptions, the exporter registry and configs, string enums, the public names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

import edgekit
from edgekit.choices import Format, Precision, StrChoice
from edgekit.compress import default_output
from edgekit.errors import ExportError, RecipeError
from edgekit.export import EXPORTERS, ExportOptions, ExportSource, get_exporter
from edgekit.options import CompressOptions
from edgekit.pipeline import StepSpec, file_tag
from edgekit.recipes import load_recipe


def test_choices_read_as_their_values():
    assert Format.ONNX == "onnx" and str(Precision.INT8) == "int8" and f"{Format.TFLITE}" == "tflite"
    assert json.dumps({"format": Format.ORT}) == '{"format": "ort"}'
    assert Format("tflite") is Format.TFLITE and Format.values() == ("onnx", "ort", "tflite")
    assert issubclass(Format, StrChoice)


def test_options_are_frozen_and_checked_when_built():
    opts = CompressOptions(steps=[StepSpec("int8")], formats=["onnx", "tflite"], output="out")
    assert opts.formats == (Format.ONNX, Format.TFLITE) and opts.output == Path("out") and opts.steps == (StepSpec("int8"),)
    with pytest.raises(ValidationError):
        opts.threads = 2  # type: ignore[misc]
    with pytest.raises(ValidationError, match=r"formats\.1\n  Input should be 'onnx', 'ort' or 'tflite'"):
        CompressOptions(formats=("onnx", "tf"))
    with pytest.raises(ValidationError, match="format\\(s\\) onnx listed twice; keep one of each"):
        CompressOptions(formats=("onnx", "ort", "onnx"))
    with pytest.raises(ValidationError, match="threads\n  Input should be greater than or equal to 1"):
        CompressOptions(threads=0)
    with pytest.raises(RecipeError, match=r"^options: unknown field 'outptu' \(did you mean 'output'\?\); allowed: "):
        CompressOptions.parse({"outptu": "x"}, what="options")


def test_options_from_a_recipe_take_its_resolved_steps_and_formats_and_keep_the_rest():
    recipe = load_recipe("int8-mobile")
    opts = CompressOptions(output="o", threads=2).with_recipe(recipe)
    assert opts.recipe is recipe and opts.output == Path("o") and opts.threads == 2
    assert opts.formats == tuple(Format(f) for f in recipe.export)
    assert [s.name for s in opts.steps] == recipe.step_names and opts.steps[0].params == recipe.resolved_steps()[0].params
    assert CompressOptions.from_recipe(recipe, output="o", threads=2) == opts


def test_file_tag_and_default_output_name_what_was_done_then_the_precision():
    model = Path("/m/net.onnx")
    assert default_output(model, [StepSpec("int8")]) == Path("/m/net.int8")
    assert file_tag([StepSpec("prune"), StepSpec("fp16")]) == "pruned.fp16"
    assert file_tag([StepSpec("distill"), StepSpec("prune"), StepSpec("int8")]) == "student.pruned.int8"
    assert file_tag([]) == "fp32"


def test_every_registered_exporter_takes_the_config_its_options_hold():
    options = ExportOptions()
    for fmt in Format:
        exp = get_exporter(fmt)
        assert exp.format == fmt and fmt in EXPORTERS
        assert isinstance(options.for_format(fmt), exp.config_cls)


def test_an_unknown_format_names_the_nearest_and_the_known_ones():
    with pytest.raises(RecipeError, match=r"^unknown export format 'tflit'; did you mean 'tflite'\?; known: onnx, ort, tflite$"):
        get_exporter("tflit")


def test_a_converting_exporter_without_its_onnx_parent_says_so(tmp_path):
    source = ExportSource(model=None, precision=Precision.FP32, reference=None, workdir=tmp_path)  # type: ignore[arg-type]
    with pytest.raises(ExportError, match="the ort exporter converts the .onnx artifact, which was not written first"):
        source.parent(Format.ORT)


def test_every_public_name_resolves():
    for name in edgekit.__all__:
        assert getattr(edgekit, name) is not None, name
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        edgekit.nope  # noqa: B018


def test_the_runs_objective_reaches_the_tflite_search_unless_its_config_names_one():
    from edgekit.choices import Objective
    from edgekit.export import TfliteConfig

    assert CompressOptions(objective="size").export_options().tflite.objective == Objective.SIZE
    assert CompressOptions().export_options().tflite.objective == Objective.BALANCED
    own = CompressOptions(objective="size", export=ExportOptions(tflite=TfliteConfig(objective="latency")))
    assert own.export_options().tflite.objective == Objective.LATENCY
    tiny = CompressOptions().with_recipe(load_recipe("tiny"))  # objective: size, set after the options were built
    assert tiny.objective == Objective.SIZE and tiny.export_options().tflite.objective == Objective.SIZE
