"""A validated recipe, the CLI flags that override it, and the resolved form the manifest records."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from edgekit.errors import RecipeError
from edgekit.pipeline import StepSpec, get_step
from edgekit.recipes.schema import DataNeeds, Gates

__all__ = ["QUANTIZE_STEPS", "TOP_LEVEL_KEYS", "Override", "Recipe"]

#: steps that set the model's precision: at most one, and it runs last
QUANTIZE_STEPS = ("int8", "fp16")
#: keys a recipe document may have; ``resolved_from`` is written by edgekit into manifests and ignored on load
TOP_LEVEL_KEYS = ("name", "description", "steps", "export", "objective", "data", "gates", "resolved_from")


@dataclass(frozen=True)
class Override:
    """A command-line flag given together with a recipe.

    ``targets`` are what the flag sets, in the recipe's terms: ``"<step>.<field>"`` (only if the
    recipe has that step), ``"gates.<gate>"`` (only if the recipe sets that gate), ``"export"`` or
    ``"objective"``.
    A flag that finds none of its targets is an error, not silently dropped.
    """

    flag: str
    targets: tuple[str, ...]
    value: Any


@dataclass(frozen=True)
class Recipe:
    """Steps in order with their parameters (as written), export formats, data needs and gates."""

    name: str
    description: str
    steps: tuple[StepSpec, ...]
    export: tuple[str, ...] = ("onnx", "ort")
    data: DataNeeds = field(default_factory=DataNeeds)
    gates: Gates = field(default_factory=Gates)
    objective: str | None = None  # latency | size | balanced; None: the run's (balanced by default)
    source: str = ""
    sha256: str = ""
    overrides: tuple[Override, ...] = ()

    @property
    def step_names(self) -> list[str]:
        return [s.name for s in self.steps]

    def summary(self) -> str:
        """``prune → distill → int8 ⇒ onnx, ort`` — the one-line plan."""
        return " → ".join(self.step_names) + " ⇒ " + ", ".join(self.export)

    def with_overrides(self, overrides: list[Override]) -> Recipe:
        """A copy with the flags applied; a flag that fits nothing in this recipe raises RecipeError."""
        steps = [StepSpec(s.name, dict(s.params)) for s in self.steps]
        export, gates, objective = self.export, self.gates.model_dump(), self.objective
        for o in overrides:
            applied = []
            for target in o.targets:
                if target == "export":
                    export = tuple(o.value)
                    applied.append(target)
                elif target == "objective":
                    objective = str(o.value)
                    applied.append(target)
                elif target.startswith("gates."):
                    gate = target.split(".", 1)[1]
                    if gates.get(gate) is not None:
                        gates[gate] = o.value
                        applied.append(target)
                else:
                    step_name, param = target.split(".", 1)
                    for s in steps:
                        if s.name == step_name:
                            s.params[param] = o.value
                            applied.append(target)
            if not applied:
                wanted = " or ".join(_target_words(t) for t in o.targets)
                raise RecipeError(f"{o.flag} sets {wanted}, but recipe {self.name!r} has none ({self.summary()}); "
                                  f"drop {o.flag}, or use a recipe that has it")
        for s in steps:
            _check_params(s, f"recipe {self.name!r} with the given flags")
        try:
            new_gates = Gates(**gates)
        except ValidationError as e:
            raise RecipeError(f"recipe {self.name!r} with the given flags: gates: {e.errors()[0]['msg']}") from None
        return replace(self, steps=tuple(steps), export=export, gates=new_gates, objective=objective,
                       overrides=self.overrides + tuple(overrides))

    def resolved_steps(self) -> list[StepSpec]:
        """Every step with all its parameters (defaults filled in), ready for :func:`edgekit.compress.compress`.

        An int8 step that leaves ``max_drop`` unset takes the ``max_accuracy_drop`` gate, so the
        candidate search aims at the bound the recipe will be held to.
        """
        out = []
        for s in self.steps:
            params = dict(s.params)
            if s.name == "int8" and "max_drop" not in params and self.gates.max_accuracy_drop is not None:
                params["max_drop"] = self.gates.max_accuracy_drop
            cfg = _check_params(StepSpec(s.name, params), f"recipe {self.name!r}")
            out.append(StepSpec(s.name, cfg.model_dump(mode="json")))
        return out

    def document(self) -> dict[str, Any]:
        """The resolved recipe as a document: what the manifest records, and itself a valid recipe.

        Writing it to a .yaml file and running it reproduces the result (same steps, same
        parameters, even if edgekit's defaults change); ``resolved_from`` says where it came from.
        """
        return {
            "name": self.name,
            "description": self.description,
            "steps": [{s.name: s.params} for s in self.resolved_steps()],
            "export": list(self.export),
            **({"objective": self.objective} if self.objective is not None else {}),
            "data": self.data.model_dump(),
            "gates": self.gates.active(),
            "resolved_from": {
                "recipe": self.name,
                "file": self.source,
                "sha256": self.sha256,
                "overrides": {o.flag: _jsonable(o.value) for o in self.overrides},
            },
        }


def _check_params(spec: StepSpec, where: str):
    cls = get_step(spec.name).config_cls
    try:
        return cls(**spec.params)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise RecipeError(f"{where}: step {spec.name!r}, field {loc!r}: {err['msg']} (given {err.get('input')!r})") from None


def _target_words(target: str) -> str:
    if target == "export":
        return "the export formats"
    if target == "objective":
        return "the objective"
    if target.startswith("gates."):
        return f"the {target.split('.', 1)[1]} gate"
    step, param = target.split(".", 1)
    return f"{step}'s {param}"


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return list(v)
    return v
