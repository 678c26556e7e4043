"""``edgekit compress``: flags → a step list → :func:`edgekit.compress.compress` → a table (or JSON)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from edgekit.cli.common import Progress, parse_formats, show_result
from edgekit.cli.training_options import prune_options, prune_steps

if TYPE_CHECKING:
    from edgekit.cli.recipes import RecipePlan
    from edgekit.importers import ImportedModel
    from edgekit.options import CompressOptions
    from edgekit.pipeline import StepSpec

__all__ = ["compress"]

#: --tflite-weights -> the exporter's per_channel (None: measure both, keep the smaller if as accurate and fast)
_PER_CHANNEL = {"auto": None, "per-channel": True, "per-tensor": False}


@click.command(context_settings={"max_content_width": 110})
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--int8", "int8", is_flag=True, help="int8 quantization, measured on this CPU: static with --data (whole-model and per-layer "
              "mixed candidates), else dynamic/weight-only; the float model is a candidate too.")
@click.option("--objective", type=click.Choice(["balanced", "latency", "size"]), default="balanced", show_default=True,
              help="Which accurate int8 candidate ships: balanced = the fastest within 0.35x the fp32 size, else the smallest "
                   "not slower than fp32; latency = the fastest; size = the smallest, even if slower than fp32.")
@click.option("--fp16", "fp16", is_flag=True, help="float16 weights and compute; fp32 inputs/outputs kept.")
@click.option("--data", type=click.Path(path_type=Path),
              help=".npz (arrays named after inputs, optional 'labels'), .npy, an image folder, or a table (.csv, .parquet) for a scikit-learn pipeline.")
@click.option("--label", metavar="COLUMN", help="The --data table's column of true labels (gives accuracy).")
@click.option("--eval-data", type=click.Path(path_type=Path), help="Held-out data for accuracy and agreement (default: --data).")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output directory (default: MODEL.int8/ next to the model).")
@click.option("--format", "formats", default="onnx,ort", show_default=True, callback=parse_formats, help="Artifacts to write: onnx, ort, tflite.")
@click.option("--tflite-io", type=click.Choice(["float", "int8"]), default="float", show_default=True,
              help="Input/output type of a full-integer int8 .tflite: float (callers need not quantize) or int8.")
@click.option("--tflite-weights", type=click.Choice(["auto", "per-channel", "per-tensor"]), default="auto", show_default=True,
              help="Scales of a full-integer int8 .tflite's weights: auto converts both and ships per-tensor (smaller) "
                   "only if it is as accurate and as fast on the evaluation data; per-channel or per-tensor forces one.")
@click.option("--ort-target", type=click.Choice(["arm", "amd64"]), default="arm", show_default=True,
              help="The CPU the .ort is built for: arm (Raspberry Pi, phones; loads everywhere) or amd64 (x86-64 devices only: "
                   "blocked-layout float kernels, about 2x faster float layers there; the agent skips it on other CPUs).")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="PyTorch state_dict for a FILE.py:FACTORY model (read with torch.load(weights_only=True)).")
@click.option("--input-shape", "input_shape", multiple=True, metavar="[NAME:]1,3,224,224",
              help="Input shape for PyTorch factories, TF models with dynamic dims, or ONNX symbolic dims (repeat per input).")
@click.option("--max-drop", type=float, default=1.0, show_default=True, help="Largest accuracy drop (points) an int8 candidate may cost; exit 3 if none meets it.")
@click.option("--calibration", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax", show_default=True)
@click.option("--calib-samples", type=click.IntRange(1), default=256, show_default=True, help="Samples used for calibration.")
@click.option("--search-time", type=click.FloatRange(1), default=180.0, show_default=True, help="Time budget (s) for trying int8 candidates.")
@click.option("--exclude", multiple=True, metavar="NODE", help="Leave this node in float (repeatable).")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True, help="Threads for evaluation and latency.")
@click.option("--version", "version", help="Model version for the manifest (default: UTC date-time, e.g. 2026.11.24.081530).")
@click.option("--name", help="Model name for the manifest (default: the file's stem).")
@click.option("--data-desc", help="What the data is, for the model card.")
@click.option("--data-layout", type=click.Choice(["NCHW", "NHWC"], case_sensitive=False), help="Layout of 4-D arrays in --data if it differs from the model's.")
@click.option("--preprocess", type=click.Path(exists=True, path_type=Path),
              help="Image preprocessing spec (YAML/JSON: size, resize_short, center_crop, interpolation, scale, mean, std, channels, layout, "
                   "raw_size, bake), baked into every artifact: they take raw uint8 RGB images.")
@click.option("--max-eval-samples", type=click.IntRange(1), default=2000, show_default=True)
@click.option("--allow-mismatch", is_flag=True, help="Keep artifacts whose parity check against their source fails.")
@click.option("-f", "--force", is_flag=True, help="Replace the output directory if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (no table, no progress).")
@click.option("--recipe", metavar="NAME|FILE.yaml", help="Run a recipe (edgekit recipes): its steps, formats and gates; flags given with it override its values.")
@prune_options
def compress(model: Path, **options: Any) -> None:
    """Compress MODEL and write .onnx/.ort/.tflite artifacts, a signed-ready manifest and a report.

    MODEL is a .onnx file, a PyTorch FILE.py:FACTORY (with --weights, --input-shape) or .pt2,
    a TensorFlow SavedModel directory, a .keras file, or a fitted scikit-learn pipeline
    (.joblib, .pkl, .skops) with its table as --data.

    \b
      edgekit compress --int8 model.onnx                  # -> model.int8/
      edgekit compress --int8 --data calib.npz -o out/ model.onnx
      edgekit compress --fp16 model.onnx
      edgekit compress --int8 --data calib.npz --format onnx,ort,tflite model.onnx
      edgekit compress --int8 --data calib.npz nets.py:build_net --weights net.pt --input-shape 1,3,224,224
      edgekit compress --prune 0.5 --structured --data train.npz model.onnx   # channels removed, fine-tuned
      edgekit compress --prune 0.8 --int8 --data train.npz model.onnx         # weights zeroed, then int8
      edgekit compress --recipe int8-mobile --data calib.npz model.onnx        # a shipped recipe (edgekit recipes)
      edgekit compress --int8 --data photos/ --preprocess pre.yaml model.onnx  # preprocessing baked in: raw images in
      edgekit compress --data train.csv --label species pipe.joblib            # a scikit-learn pipeline, whole
    """
    from rich.console import Console

    from edgekit.compress import compress as run
    from edgekit.errors import Interrupted
    from edgekit.importers import detect_kind, imported, parse_input_shapes

    o = options
    # a whole pipeline (a scikit-learn one, or a network with its preprocessing baked in) is worth exporting as it is
    o["whole"] = o["preprocess"] is not None or detect_kind(str(model)) == "sklearn"
    plan, steps, formats = _plan(o)
    if "tflite" in formats:  # fail before the slow steps, not after them
        from edgekit.export.tflite import check_available

        check_available()
    console = Console(stderr=True, quiet=o["as_json"])
    try:
        with Progress(console, enabled=not o["as_json"]) as progress, \
                imported(model, weights=o["weights"], input_shapes=parse_input_shapes(o["input_shape"]), data=o["data"], say=progress.say,
                         progress=progress.update) as source:
            result = run(source.path, o["data"], _options(o, steps, formats, plan, source), say=progress.say, progress=progress.update)
    except KeyboardInterrupt:  # compress removes its staging and work directories (and the TF child's) on the way out
        raise Interrupted("compress interrupted (Ctrl-C): no output was written and its temporary files were removed") from None
    show_result(result, as_json=o["as_json"])
    if plan:
        plan.check_gates(result)  # exit 3 after the output is written and shown


def _plan(o: dict[str, Any]) -> tuple[RecipePlan | None, list[StepSpec], tuple[str, ...]]:
    """The recipe (if any), the steps and the formats the flags ask for; usage errors for flags that do not fit."""
    from edgekit.pipeline import StepSpec

    if o["int8"] and o["fp16"]:
        raise click.UsageError("choose one of --int8 and --fp16")
    plan, formats = None, o["formats"]
    if o["recipe"] is not None:  # the recipe's steps and formats, with the flags given here overriding its values
        from edgekit.cli.recipes import recipe_plan

        plan = recipe_plan(click.get_current_context(), o["recipe"], o["data"])
        steps, formats = list(plan.steps), plan.formats
    else:
        steps = prune_steps(o)  # pruning runs on the float model, before int8/fp16
    # --format given with no step is a plain conversion: fp32 artifacts, checked against the source, with manifest and report
    converting = click.get_current_context().get_parameter_source("formats") is click.core.ParameterSource.COMMANDLINE
    if not (o["int8"] or o["fp16"] or steps or o.get("whole") or plan or converting):
        raise click.UsageError("nothing to do: pass --int8, --fp16, --prune RATIO or --recipe NAME (see edgekit recipes), "
                               "or --format onnx,ort,tflite for a plain fp32 conversion")
    if o["int8"]:
        steps.append(StepSpec("int8", {"max_drop": o["max_drop"], "calibration": o["calibration"], "calib_samples": o["calib_samples"],
                                       "search_time": o["search_time"], "exclude": list(o["exclude"])}))
    if o["fp16"]:
        steps.append(StepSpec("fp16", {}))
    if o["tflite_io"] != "float" and "tflite" not in formats:
        raise click.UsageError("--tflite-io applies to the .tflite artifact; add tflite to --format")
    if o["ort_target"] != "arm" and "ort" not in formats:
        raise click.UsageError("--ort-target applies to the .ort artifact; add ort to --format")
    if o["tflite_weights"] != "auto" and "tflite" not in formats:
        raise click.UsageError("--tflite-weights applies to the .tflite artifact; add tflite to --format")
    return plan, steps, tuple(formats)


def _options(o: dict[str, Any], steps: list[StepSpec], formats: tuple[str, ...], plan: RecipePlan | None,
             source: ImportedModel) -> CompressOptions:
    """The flags as :class:`~edgekit.options.CompressOptions`; a PyTorch/TF model's output is named after the original."""
    from edgekit.compress import default_output
    from edgekit.data import ImageSpec
    from edgekit.export import ExportOptions, OrtConfig, TfliteConfig
    from edgekit.options import CompressOptions

    tflite = TfliteConfig(io=o["tflite_io"], calib_samples=o["calib_samples"], per_channel=_PER_CHANNEL[o["tflite_weights"]])
    # a recipe's objective, or --objective (given with a recipe, the flag has already overridden the recipe's)
    objective = plan.recipe.objective if plan and plan.recipe.objective else o["objective"]
    return CompressOptions(
        steps=tuple(steps), formats=formats, export=ExportOptions(ort=OrtConfig(target=o["ort_target"]), tflite=tflite), eval_data=o["eval_data"],
        output=o["output"] or default_output(source.base, steps), force=o["force"], name=o["name"], version=o["version"],
        data_desc=o["data_desc"], image_spec=ImageSpec.from_file(o["preprocess"]) if o["preprocess"] else None,
        data_layout=o["data_layout"], threads=o["threads"], max_eval_samples=o["max_eval_samples"], allow_mismatch=o["allow_mismatch"],
        recipe=plan.recipe if plan else None, origin=source.describe(o["weights"]), origin_check=source.check, label=o["label"], objective=objective,
        input_shapes=source.input_shapes,
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(compress())
