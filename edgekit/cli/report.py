"""``edgekit report``: measure models side by side and render the comparison (terminal, JSON, HTML)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

__all__ = ["report"]


@click.command(context_settings={"max_content_width": 110})
@click.argument("models", nargs=-1, type=click.Path(path_type=Path))
@click.option("--data", type=click.Path(path_type=Path), help="Evaluation data (.npz with 'labels' for accuracy, .npy, image folder). "
              "Without it: generated inputs, agreement with the baseline only.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the report to this file: .html (self-contained page with plots) or .json.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (schema: edgekit report --schema).")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True, help="Threads for every model's latency.")
@click.option("--data-layout", type=click.Choice(["NCHW", "NHWC"], case_sensitive=False), help="Layout of 4-D arrays in --data if it differs from the baseline's.")
@click.option("--max-eval-samples", type=click.IntRange(1), default=2000, show_default=True)
@click.option("--latency-budget", type=click.FloatRange(0.5), default=10.0, show_default=True, help="Seconds spent timing (all models together).")
@click.option("--no-layers", is_flag=True, help="Skip the per-layer error of int8 .onnx models.")
@click.option("--schema", "schema", is_flag=True, help="Print the report's JSON Schema and exit.")
def report(models: tuple[Path, ...], **options: Any) -> None:
    """Compare MODELS (files or edgekit output directories) on the same data, runtime settings and CPU.

    The first model is the baseline; an output directory expands to its artifacts (preceded by its
    source model when it is the first argument and the source sits next to it).

    \b
      edgekit report model.onnx out/model.int8.onnx out/model.int8.tflite --data eval.npz -o report.html
      edgekit report out/ --json
    """
    from edgekit.report import compare_report, json_schema, render_html, render_table, to_json

    o = options
    output: Path | None = o["output"]
    if o["schema"]:
        click.echo(json.dumps(json_schema(), indent=2))
        return
    if not models:
        raise click.UsageError("pass at least one model file or output directory (the first is the baseline)")
    if output is not None and output.suffix.lower() not in (".html", ".htm", ".json"):
        raise click.BadParameter(f"{output.name}: the report is written as .html or .json; name the file accordingly", param_hint="-o")
    rep = compare_report(list(models), data=o["data"], threads=o["threads"], max_eval_samples=o["max_eval_samples"],
                         latency_budget_s=o["latency_budget"], data_layout=o["data_layout"], per_layer=not o["no_layers"])
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        text = to_json(rep) if output.suffix.lower() == ".json" else render_html(rep)
        output.write_text(text, encoding="utf-8")
    if o["as_json"]:
        click.echo(to_json(rep), nl=False)
        return
    from rich.console import Console

    console = Console() if Console().is_terminal else Console(width=170)
    render_table(rep, console)
    if output is not None:
        console.print(f"wrote {output}")
