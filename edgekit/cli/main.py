"""The ``edgekit`` command. Thin: parse, call the library, render.

Subcommands are imported only when run (``LazyGroup``), so ``edgekit --help`` never pays for
onnx, onnxruntime, torch or tensorflow. Any ``EdgekitError`` becomes one line and its exit code
(1, or 3 for an unmet accuracy bound); usage errors exit 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

__all__ = ["cli", "main"]

# name -> "module:attribute". Add one line per command; the module is imported on use only.
COMMANDS: dict[str, str] = {
    "agent": "edgekit.cli.agent:agent",
    "compress": "edgekit.cli.compress:compress",
    "fleet": "edgekit.cli.fleet:fleet",
    "keys": "edgekit.cli.keys:keys",
    "sign": "edgekit.cli.sign:sign",
    "inspect": "edgekit.cli.inspect:inspect_cmd",
    "report": "edgekit.cli.report:report",
    "recipes": "edgekit.cli.recipes:recipes",
    "distill": "edgekit.cli.distill:distill",
}

HELP = {
    "agent": "Bundle the device agent, its config and a model into an installer for one device.",
    "compress": "Quantize / prune / distill a model and export .onnx, .ort (and .tflite) with a manifest.",
    "fleet": "Deploy signed models to devices in waves; status, rollback, jobs, cancel.",
    "keys": "Generate the ed25519 key pair that signs model updates.",
    "sign": "Sign an output directory's manifest (covers every artifact by sha256).",
    "inspect": "Show a model's or an output directory's signature, weights and manifest.",
    "report": "Compare models and artifacts: size, gzip, weights, latency, accuracy; table, JSON or HTML with plots.",
    "recipes": "List, show and check YAML recipes (compress --recipe NAME_OR_FILE).",
    "distill": "Train a smaller student from a teacher model (auto:W or your own), then export it like compress.",
}


class CleanError(click.ClickException):
    """An error shown as one line, ``error: ...``, with the error's own exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            # click would say "Aborted!" and exit 1; an interrupt is 130 (128 + SIGINT) and one line. Commands that know what an
            # interrupt leaves behind say so themselves (edgekit.errors.Interrupted, exit 130 like any EdgekitError's code)
            _deaf_to_ctrl_c()
            click.echo(f"interrupted (Ctrl-C): edgekit {ctx.invoked_subcommand or ''} stopped".replace("  ", " "), err=True)
            raise click.exceptions.Exit(130) from None
        except Exception as e:
            from edgekit.errors import EdgekitError

            if (ctx.obj or {}).get("debug"):
                raise
            if isinstance(e, EdgekitError):
                if e.exit_code == 130:
                    _deaf_to_ctrl_c()
                raise CleanError(str(e), e.exit_code) from e
            if isinstance(e, KeyboardInterrupt):
                raise
            raise CleanError(f"internal error: {type(e).__name__}: {e} (run with --debug for the traceback, and please report it)", 1) from e

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Short help from the table above: listing commands must not import them.
        rows = [(n, HELP.get(n, "")) for n in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _deaf_to_ctrl_c() -> None:
    """Once an interrupt is being reported, a second Ctrl-C (or one still pending) must not turn exit 130 into death by
    SIGINT half-way through the exit, with the one-line answer already printed."""
    import signal

    if _OWN_PROCESS:  # only the edgekit process's entry point owns its signal handlers (not a caller's CliRunner or app)
        signal.signal(signal.SIGINT, signal.SIG_IGN)


_OWN_PROCESS = False


def _quiet_frameworks() -> None:
    # TensorFlow and absl print pages of logs on import; edgekit's output is its own.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="edgekit", message="edgekit %(version)s")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """edgekit: shrink ML models for the edge, prove they still work, ship and watch them.

    \b
      edgekit compress --int8 model.onnx
      edgekit compress --int8 --data calib.npz -o out/ model.onnx
      edgekit compress --fp16 model.onnx
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def main(argv: list[str] | None = None) -> None:
    """Entry point for the ``edgekit`` script."""
    global _OWN_PROCESS
    _OWN_PROCESS = True
    _quiet_frameworks()
    try:
        cli.main(args=argv, prog_name="edgekit")
    except KeyboardInterrupt:
        _deaf_to_ctrl_c()
        click.echo("Interrupted.", err=True)
        sys.exit(130)
