"""``edgekit distill``: flags → [distill, int8|fp16] steps → :func:`edgekit.compress.compress` → the compress table.

The teacher is the source model of the run, so the manifest, parity checks and report compare the
student (and its int8 form) with the teacher like any compressed artifact.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgekit.cli.compress import FORMATS, _formats, _Progress
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
@click.option("--fp16", is_flag=True, help="Convert the trained student to float16.")
@click.option("--max-drop", type=float, default=1.5, show_default=True,
              help="Largest accuracy drop (points) vs the teacher an int8 student may have; exit 3 if none meets it.")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output directory (default: TEACHER.student[.int8]/ next to the teacher).")
@click.option("--format", "formats", default="onnx,ort", show_default=True, callback=_formats, help=f"Artifacts to write: {', '.join(FORMATS)}.")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True, help="Threads for training, evaluation and latency.")
@click.option("--name", help="Model name for the manifest (default: the teacher's stem).")
@click.option("--version", "version", help="Model version for the manifest (default: UTC date-time).")
@click.option("--data-layout", type=click.Choice(["NCHW", "NHWC"], case_sensitive=False), help="Layout of 4-D arrays in --data if it differs from the model's.")
@click.option("--max-eval-samples", type=click.IntRange(1), default=2000, show_default=True)
@click.option("-f", "--force", is_flag=True, help="Replace the output directory if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (no table, no progress).")
def distill(teacher: str, student: str, data: Path, keep, round_to, int8: bool, fp16: bool, max_drop: float, output, formats,
            threads: int, name, version, data_layout, max_eval_samples: int, force: bool, as_json: bool, **train) -> None:
    """Train a smaller STUDENT to mimic TEACHER on --data, then export, check and report it like compress.

    \b
      edgekit distill --teacher model.onnx --student auto:0.5 --data train.npz
      edgekit distill --teacher model.onnx --student nets.py:small_net --data train.npz --epochs 20
      edgekit distill --teacher model.onnx --data train.npz --int8 --format onnx,ort,tflite
      edgekit distill --teacher nets.py:big_net --student nets.py:small_net --data train.npz
    """
    from rich.console import Console

    from edgekit.compress import compress as run
    from edgekit.pipeline import StepSpec
    from edgekit.report import compress_report, render_compress_table

    if int8 and fp16:
        raise click.UsageError("choose one of --int8 and --fp16")
    params = {"student": student, "keep": list(keep), **training_params(train)}
    if round_to is not None:
        params["round_to"] = round_to
    steps = [StepSpec("distill", params)]
    source = _teacher_file(teacher, data, output, force)
    if int8:
        steps.append(StepSpec("int8", {"max_drop": max_drop}))
    if fp16:
        steps.append(StepSpec("fp16", {}))
    console = Console(stderr=True, quiet=as_json)
    with _Progress(console, enabled=not as_json) as progress:
        result = run(
            source, steps, formats=formats, data=data, output=output, force=force, name=name, version=version,
            data_layout=data_layout, threads=threads, max_eval_samples=max_eval_samples,
            say=lambda m: progress.say(m), progress=progress.update,
        )
    if as_json:
        click.echo(json.dumps(compress_report(result), indent=2))
        return
    out = Console() if Console().is_terminal else Console(width=160)
    render_compress_table(result, out)
    out.print(f"wrote {result.output}/ : " + ", ".join(sorted(p.name for p in result.output.iterdir())))


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
