"""Recipes: declarative compression pipelines in YAML, shipped ones next to this file.

A recipe names its steps in order with their parameters, the formats to export, the data it
needs and the gates its artifacts must pass::

    # when to use it (a comment block)
    name: int8
    description: Static int8 for ONNX Runtime on x86 and ARM CPUs.
    steps:
      - int8: {mode: static, calibration: minmax}
    export: [onnx, ort]
    data: {required: true, note: "a few hundred representative inputs"}
    gates: {max_accuracy_drop: 1.0}

Recipes and CLI flags compile to the same list of :class:`~edgekit.pipeline.StepSpec`; a flag
given with a recipe overrides the recipe's value (:class:`Override`), and the manifest records
the resolved recipe (:meth:`Recipe.document`), itself a valid recipe that reproduces the result.
The recipe judges: :func:`evaluate_gates` turns measured rows into an outcome (data the report
renders), :func:`raise_on_failed_gates` turns a missed gate into exit 3.

    recipe = load_recipe("int8-mobile")            # a shipped name, or a path to a .yaml file
    result = compress_with_recipe("model.onnx", "calib.npz", recipe)   # edgekit.compress
"""

from __future__ import annotations

import difflib
from pathlib import Path

from edgekit.errors import RecipeError
from edgekit.recipes.gates import check_data, evaluate_gates, raise_on_failed_gates
from edgekit.recipes.loader import parse_recipe, read_recipe_file
from edgekit.recipes.model import QUANTIZE_STEPS, Override, Recipe
from edgekit.recipes.schema import DataNeeds, Gates, parse_bytes

__all__ = [
    "QUANTIZE_STEPS",
    "RECIPES_DIR",
    "DataNeeds",
    "Gates",
    "Override",
    "Recipe",
    "check_data",
    "evaluate_gates",
    "load_recipe",
    "parse_bytes",
    "parse_recipe",
    "raise_on_failed_gates",
    "recipe_comment",
    "shipped_recipes",
]

#: the shipped recipes (``recipes/`` at the repository root links here)
RECIPES_DIR = Path(__file__).resolve().parent


def shipped_recipes() -> dict[str, Path]:
    """Shipped recipe name → file, sorted by name."""
    return {p.stem: p for p in sorted(RECIPES_DIR.glob("*.yaml"), key=lambda p: p.stem)}


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A shipped recipe by name (``int8-mobile``) or a recipe file by path (``./my.yaml``)."""
    text = str(name_or_path)
    p = Path(text)
    shipped = shipped_recipes()
    if text in shipped and not isinstance(name_or_path, Path):  # a shipped name wins over a same-named file or folder
        return read_recipe_file(shipped[text], label=f"{text}.yaml", source=f"edgekit/recipes/{text}.yaml (shipped)")
    if p.suffix in (".yaml", ".yml") or "/" in text or "\\" in text or p.exists():
        return read_recipe_file(p)
    near = difflib.get_close_matches(text, list(shipped), n=1, cutoff=0.5)
    hint = f"; did you mean {near[0]!r}?" if near else "."
    raise RecipeError(f"no shipped recipe named {text!r}{hint} Shipped: {', '.join(shipped)}. Or pass a path to a recipe .yaml file")


def recipe_comment(path: Path) -> str:
    """The leading comment block of a recipe file (when to use it), without the ``#`` marks."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].removeprefix(" "))
    return "\n".join(lines).strip()
