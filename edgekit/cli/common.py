"""What the commands that compress share: the ``--format`` parser, the progress display, and how a result is shown."""

from __future__ import annotations

import json
from types import TracebackType
from typing import TYPE_CHECKING

import click

from edgekit.choices import Format

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress as RichProgress
    from rich.progress import TaskID

    from edgekit.results import CompressResult

__all__ = ["FORMATS", "Progress", "parse_formats", "show_result"]

FORMATS = Format.values()


def parse_formats(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    """``--format onnx,ort,tflite`` → ("onnx", "ort", "tflite"); a usage error naming what is not a format."""
    items = tuple(f.strip().lower() for f in value.split(",") if f.strip())
    bad = [f for f in items if f not in FORMATS]
    if bad or not items:
        raise click.BadParameter(f"{', '.join(bad) or value!r} is not a format; choose from {', '.join(FORMATS)} (comma-separated)")
    return items


def show_result(result: CompressResult, *, as_json: bool) -> None:
    """The report as JSON, or the comparison table, the int8 search and what was written."""
    if as_json:
        click.echo(json.dumps(result.report, indent=2))
        return
    from rich.console import Console

    from edgekit.report import render_compress_table

    out = Console() if Console().is_terminal else Console(width=160)
    render_compress_table(result.report, out)
    out.print(f"wrote {result.output}/ : " + ", ".join(sorted(p.name for p in result.output.iterdir())))


class Progress:
    """A rich spinner/bar on stderr for long phases; silent under --json or when not a terminal."""

    def __init__(self, console: Console, *, enabled: bool) -> None:
        self.console = console
        self.enabled = enabled and console.is_terminal
        self._progress: RichProgress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.progress import BarColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self._progress = RichProgress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                                          console=self.console, transient=True)
            self._progress.__enter__()
            self._task = self._progress.add_task("loading", total=1.0)
        return self

    def update(self, message: str, fraction: float) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, description=message, completed=max(0.0, min(1.0, fraction)))

    def say(self, message: str) -> None:
        self.console.print(message, highlight=False, soft_wrap=True)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> bool:
        if self._progress is not None:
            self._progress.__exit__(exc_type, exc, tb)
        return False
