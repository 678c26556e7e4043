"""``edgekit distill``: flags → [distill, int8|fp16] steps → :func:`edgekit.compress.compress` → the compress table.

The teacher is the source model of the run, so the manifest, parity checks and report compare the
student (and its int8 form) with the teacher like any compressed artifact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from edgekit.cli.common import FORMATS, Progress, parse_formats, show_result
from edgekit.cli.training_options import training_options, training_params

__all__ = ["distill"]


@click.command(context_settings={"max_content_width": 110})
@click.option("--teacher", required=True, metavar="MODEL.onnx|MODULE:FUNCTION",
              help="The trained model to learn from: an .onnx file (run in ONNX Runtime), or a factory returning the trained "
                   "torch.nn.Module (exported to ONNX next to the output first).")
@click.option("--student", default="auto:0.5", show_default=True, metavar="auto:W|MODULE:FUNCTION",
              help="auto:W: the teacher with every prunable layer's width × W (0<W<1). MODULE:FUNCTION or file.py:function: "
                   "a factory returning a torch.nn.Module with the teacher's inputs and output shapes.")
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="Training data: .npz (arrays named after the inputs, optional 'labels'), .npy, or an image folder. Labels are optional.")
@training_options
@click.option("--keep", multiple=True, metavar="NAME", help="auto:W: keep this layer's width (node name or glob; repeatable).")
@click.option("--round-to", type=click.IntRange(1), help="auto:W: channel counts a multiple of this.")
@click.option("--int8", is_flag=True, help="Quantize the trained student to int8 (static, calibrated on --data).")
@click.option("--objective", type=click.Choice(["balanced", "latency", "size"]), default="balanced", show_default=True,
              help="With --int8: which accurate candidate ships, as for compress (size: the smallest, even if slower than fp32).")
@click.option("--fp16", is_flag=True, help="Convert the trained student to float16.")
@click.option("--max-drop", type=float, default=1.5, show_default=True,
              help="Largest accuracy drop (points) vs the teacher an int8 student may have; exit 3 if none meets it.")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output directory (default: TEACHER.student[.int8]/ next to the teacher).")
@click.option("--format", "formats", default="onnx,ort", show_default=True, callback=parse_formats, help=f"Artifacts to write: {', '.join(FORMATS)}.")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True, help="Threads for training, evaluation and latency.")
@click.option("--name", help="Model name for the manifest (default: the teacher's stem).")
@click.option("--version", "version", help="Model version for the manifest (default: UTC date-time).")
@click.option("--data-layout", type=click.Choice(["NCHW", "NHWC"], case_sensitive=False), help="Layout of 4-D arrays in --data if it differs from the model's.")
@click.option("--max-eval-samples", type=click.IntRange(1), default=2000, show_default=True)
@click.option("-f", "--force", is_flag=True, help="Replace the output directory if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (no table, no progress).")
def distill(**options: Any) -> None:
    """Train a smaller STUDENT to mimic TEACHER on --data, then export, check and report it like compress.

    \b
      edgekit distill --teacher model.onnx --student auto:0.5 --data train.npz
      edgekit distill --teacher model.onnx --student nets.py:small_net --data train.npz --epochs 20
      edgekit distill --teacher model.onnx --data train.npz --int8 --format onnx,ort,tflite
      edgekit distill --teacher nets.py:big_net --student nets.py:small_net --data train.npz
    """
    from rich.console import Console

    from edgekit.compress import compress as run
    from edgekit.options import CompressOptions
    from edgekit.pipeline import StepSpec

    o = options
    if o["int8"] and o["fp16"]:
        raise click.UsageError("choose one of --int8 and --fp16")
    params = {"student": o["student"], "keep": list(o["keep"]), **training_params(o)}
    if o["round_to"] is not None:
        params["round_to"] = o["round_to"]
    steps = [StepSpec("distill", params)]
    source = _teacher_file(o["teacher"], o["data"], o["output"], o["force"])
    if o["int8"]:
        steps.append(StepSpec("int8", {"max_drop": o["max_drop"]}))
    if o["fp16"]:
        steps.append(StepSpec("fp16", {}))
    opts = CompressOptions(steps=tuple(steps), formats=o["formats"], output=o["output"], force=o["force"], name=o["name"],
                           version=o["version"], data_layout=o["data_layout"], threads=o["threads"], max_eval_samples=o["max_eval_samples"],
                           objective=o["objective"])
    console = Console(stderr=True, quiet=o["as_json"])
    with Progress(console, enabled=not o["as_json"]) as progress:
        result = run(source, o["data"], opts, say=progress.say, progress=progress.update)
    show_result(result, as_json=o["as_json"])


def _teacher_file(teacher: str, data: Path, output: Path | None, force: bool) -> Path:
    """The teacher as an .onnx path: the file given, or a PyTorch factory's model exported beside the output."""
    from edgekit.distill.teacher import export_torch_teacher, is_factory_spec
    from edgekit.errors import InputError

    if not is_factory_spec(teacher):
        return Path(teacher)
    dest = (output.parent if output else Path.cwd()) / f"{teacher.rsplit(':', 1)[1]}.teacher.onnx"
    if dest.exists() and not force:
        raise InputError(f"{dest} exists; the PyTorch teacher is exported there: pass --force to replace it, or -o elsewhere")
    export_torch_teacher(teacher, data, dest)
    click.echo(f"exported the PyTorch teacher {teacher} to {dest}", err=True)
    return dest
