"""``edgekit recipes`` (list, show, check) and ``compress --recipe``: a recipe plus the flags given with it → steps.

A flag given on the command line together with ``--recipe`` overrides the recipe's value
(:data:`OVERRIDES` says which flag sets what); a flag that would change the recipe's steps
(``--int8``, ``--fp16``) is a usage error, and so is an override that finds nothing to set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from edgekit.pipeline import StepSpec
    from edgekit.recipes import Recipe
    from edgekit.results import CompressResult

__all__ = ["OVERRIDES", "RecipePlan", "recipe_plan", "recipes"]

_TRAINING = ("epochs", "lr", "batch_size", "temperature", "alpha", "val_split", "patience", "seed", "checkpoint_dir")

#: compress parameter → (flag, what it sets in a recipe). See ``edgekit.recipes.Override``.
OVERRIDES: dict[str, tuple[str, tuple[str, ...]]] = {
    "formats": ("--format", ("export",)),
    "objective": ("--objective", ("objective",)),
    "max_drop": ("--max-drop", ("int8.max_drop", "gates.max_accuracy_drop")),
    "calibration": ("--calibration", ("int8.calibration",)),
    "calib_samples": ("--calib-samples", ("int8.calib_samples",)),
    "search_time": ("--search-time", ("int8.search_time",)),
    "exclude": ("--exclude", ("int8.exclude",)),
    "prune": ("--prune", ("prune.ratio",)),
    "structured": ("--structured", ("prune.method",)),
    "keep": ("--keep", ("prune.keep", "distill.keep")),
    "prune_layer": ("--prune-layer", ("prune.layers",)),
    "prune_scope": ("--prune-scope", ("prune.scope",)),
    "importance": ("--importance", ("prune.importance",)),
    "sensitivity": ("--sensitivity", ("prune.sensitivity",)),
    "round_to": ("--round-to", ("prune.round_to", "distill.round_to")),
    "torch_model": ("--torch-model", ("prune.torch_model",)),
    **{k: (f"--{k.replace('_', '-')}", (f"prune.{k}", f"distill.{k}")) for k in _TRAINING},
}
#: flags that pick steps: a recipe already names its steps
_STEP_FLAGS = {"int8": "--int8", "fp16": "--fp16"}


@dataclass(frozen=True)
class RecipePlan:
    """What ``compress --recipe`` runs: the resolved recipe (flags applied), its steps and formats; its gates to check."""

    recipe: Recipe
    steps: tuple[StepSpec, ...]
    formats: tuple[str, ...]

    def check_gates(self, result: CompressResult) -> None:
        """GateError (exit 3) when an artifact missed a gate (``result.gates``); the output stays written."""
        from edgekit.recipes import raise_on_failed_gates

        raise_on_failed_gates(result.gates, recipe=self.recipe.name, output=result.output)


def recipe_plan(ctx: click.Context, name_or_path: str, data: Path | None) -> RecipePlan:
    """Load the recipe, apply the flags given explicitly on the command line, check the data needs."""
    from click.core import ParameterSource

    from edgekit.recipes import Override, check_data, load_recipe

    given = {name for name in ctx.params if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)}
    for name, flag in _STEP_FLAGS.items():
        if name in given and ctx.params[name]:
            raise click.UsageError(f"--recipe names the steps itself; drop {flag} (or copy the recipe, edit its steps and pass the copy)")
    recipe = load_recipe(name_or_path)
    overrides = []
    for name in sorted(given & set(OVERRIDES), key=list(OVERRIDES).index):
        flag, targets = OVERRIDES[name]
        overrides.append(Override(flag, targets, _value(name, ctx.params[name])))
    resolved = recipe.with_overrides(overrides)
    check_data(resolved, data)
    return RecipePlan(resolved, tuple(resolved.resolved_steps()), resolved.export)


def _value(name: str, value: Any) -> Any:
    if name == "structured":
        return "structured" if value else "unstructured"
    if isinstance(value, tuple):
        return list(value)
    return value


# --- edgekit recipes ----------------------------------------------------------------------------


@click.group(invoke_without_command=True, context_settings={"max_content_width": 110})
@click.option("--json", "as_json", is_flag=True, help="List the recipes as JSON.")
@click.pass_context
def recipes(ctx: click.Context, as_json: bool) -> None:
    """List the shipped recipes; show or check one.

    \b
      edgekit recipes                          # shipped recipes, one line each
      edgekit recipes show int8-mobile         # the YAML, with its when-to-use comment
      edgekit recipes check ./my-recipe.yaml   # validate (file, line, step, field) and print the resolved steps
      edgekit compress --recipe int8-mobile --data calib.npz model.onnx
    """
    if ctx.invoked_subcommand is not None:
        return
    from edgekit.errors import RecipeError
    from edgekit.recipes import load_recipe, shipped_recipes

    rows = []
    for name in shipped_recipes():
        try:
            r = load_recipe(name)
            rows.append({"name": name, "description": r.description, "steps": r.step_names, "export": list(r.export),
                         "needs_data": r.data.required, "gates": r.gates.active(), "error": None})
        except RecipeError as e:  # e.g. a step whose helper module is not installed; list it, say why
            rows.append({"name": name, "description": "", "steps": [], "export": [], "needs_data": None, "gates": {}, "error": str(e)})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title="Shipped recipes (edgekit compress --recipe NAME ...)", title_justify="left")
    for col in ("recipe", "steps ⇒ formats", "data", "description"):
        t.add_column(col, overflow="fold")
    for r in rows:
        if r["error"]:
            t.add_row(r["name"], "—", "—", f"[red]invalid: {r['error']}[/red]")
            continue
        t.add_row(r["name"], " → ".join(r["steps"]) + " ⇒ " + ", ".join(r["export"]), "required" if r["needs_data"] else "optional",
                  r["description"])
    Console(width=None if Console().is_terminal else 140).print(t)


@recipes.command("show")
@click.argument("recipe")
def show(recipe: str) -> None:
    """Print a shipped recipe's YAML (a starting point: edgekit recipes show int8 > my.yaml)."""
    from edgekit.recipes import load_recipe, shipped_recipes

    load_recipe(recipe)  # validates, and names the nearest recipe on a typo
    path = shipped_recipes().get(recipe) or Path(recipe)
    click.echo(path.read_text(encoding="utf-8"), nl=False)


@recipes.command("check")
@click.argument("recipe")
@click.option("--json", "as_json", is_flag=True, help="Print the resolved recipe as JSON.")
def check(recipe: str, as_json: bool) -> None:
    """Validate RECIPE (a file or a shipped name) without running it; print its resolved steps.

    Exit 0 when valid; exit 1 with one line naming the file, line, step and field otherwise.
    """
    import yaml

    from edgekit.recipes import load_recipe
    from edgekit.recipes.schema import format_bytes

    r = load_recipe(recipe)
    doc = r.document()
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    needs = "needs --data" + (" with labels" if r.data.labels else "") if r.data.required else "data optional"
    gates = ", ".join(f"{k} {format_bytes(v) if k == 'max_size' else v}" for k, v in r.gates.active().items()) or "none"
    click.echo(f"ok: {recipe}: recipe {r.name!r}, {r.summary()}; {needs}; gates: {gates}")
    click.echo("resolved steps (every parameter, defaults filled in):")
    click.echo(yaml.safe_dump({"steps": doc["steps"]}, sort_keys=False, default_flow_style=False).rstrip())
