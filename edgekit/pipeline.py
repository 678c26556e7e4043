"""Compression steps: a registry of named steps with typed, frozen configs, and the context they share.

A step is a function ``(model: onnx.ModelProto, config, ctx: Context) -> StepOutcome`` that never
modifies its input. CLI flags and recipes compile to the same list of :class:`StepSpec`.
Step modules are imported only when used, so listing or validating steps stays cheap::

    @step("int8", Int8Config)
    def int8(model, config, ctx): ...
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from edgekit.choices import Format, Objective, OrtTarget, Precision
from edgekit.config import FrozenConfig
from edgekit.errors import RecipeError
from edgekit.runlog import RunLog

if TYPE_CHECKING:  # annotations only: validating a recipe's steps imports neither onnx nor the runtimes
    import onnx

    from edgekit.data import Dataset
    from edgekit.reference import Reference

__all__ = ["STEPS", "Context", "FormatModel", "Step", "StepConfig", "StepOutcome", "StepSpec", "file_tag", "get_step", "step", "validate_step"]


class StepConfig(FrozenConfig):
    """Base of every step config: typed, frozen, unknown keys are errors."""


# step name -> "module:function". The function carries its config class (see ``step``).
STEPS: dict[str, str] = {
    "int8": "edgekit.quantize.int8:int8",
    "fp16": "edgekit.quantize.fp16:fp16",
    "prune": "edgekit.prune.step:prune",
    "distill": "edgekit.distill.step:distill",
}


@dataclass(frozen=True)
class StepSpec:
    """One step of a pipeline as written in a recipe or implied by CLI flags."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    """What steps share: the reference to judge against, where to work, the training data, how to report."""

    ref: Reference
    workdir: Path
    threads: int = 1
    train_data: Dataset | None = None
    log: RunLog = field(default_factory=RunLog)
    #: the artifact formats the run will write: a step choosing between models judges them as they will ship
    formats: tuple[Format, ...] = (Format.ONNX, Format.ORT)
    #: what a step choosing between measured models optimizes (int8: latency, size, or balanced)
    objective: Objective = Objective.BALANCED
    #: the CPU the run's .ort is built for: a step timing .ort candidates converts them as the exporter will
    ort_target: OrtTarget = OrtTarget.ARM


@dataclass(frozen=True)
class FormatModel:
    """Another model for one export format than the .onnx's, its precision, and that artifact's extra."""

    model: onnx.ModelProto
    precision: Precision
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepOutcome:
    """A step's new model, the precision it leaves, and what to record in the manifest."""

    model: onnx.ModelProto
    precision: Precision | None = None  # None: unchanged
    record: dict[str, Any] = field(default_factory=dict)
    artifact_extra: dict[str, Any] = field(default_factory=dict)  # what the manifest keeps about the artifact (e.g. the int8 candidate)
    failed_bound: str | None = None  # set when an accuracy bound was not met (exit 3 after writing)
    #: another model for one export format: the int8 search may find another candidate best as .ort than as .onnx
    #: (an .ort is not re-optimized at load and has no x86 blocked float kernels), and each ships its best
    format_models: dict[Format, FormatModel] = field(default_factory=dict)


class Step(Protocol):
    """A registered step: ``(model, config, ctx) -> StepOutcome``, carrying its name and config class."""

    step_name: str
    config_cls: type[StepConfig]

    def __call__(self, model: onnx.ModelProto, config: Any, ctx: Context, /) -> StepOutcome: ...


def file_tag(steps: Sequence[StepSpec]) -> str:
    """The tag artifact files and the default output directory carry: ``pruned.int8`` → ``model.pruned.int8.onnx``.

    What was done (a student, pruned), then the precision; ``fp32`` when no step changes either.
    """
    names = [s.name for s in steps]
    parts = [t for n, t in (("distill", "student"), ("prune", "pruned")) if n in names]
    parts += [p for p in ("int8", "fp16") if p in names][:1]
    return ".".join(parts) or "fp32"


def step(name: str, config_cls: type[StepConfig]) -> Callable[[Callable[..., StepOutcome]], Step]:
    """Mark a function as the step ``name`` with config ``config_cls``."""

    def deco(fn: Callable[..., StepOutcome]) -> Step:
        fn.step_name = name  # type: ignore[attr-defined]
        fn.config_cls = config_cls  # type: ignore[attr-defined]
        return cast(Step, fn)

    return deco


def get_step(name: str) -> Step:
    """The step registered as ``name``; a RecipeError listing the known steps (and the nearest) otherwise."""
    target = STEPS.get(name)
    if target is None:
        near = difflib.get_close_matches(name, list(STEPS), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise RecipeError(f"unknown step {name!r}{hint} Known: {', '.join(sorted(STEPS))}")
    module, attr = target.split(":")
    fn = getattr(importlib.import_module(module), attr)
    if getattr(fn, "step_name", None) != name:
        raise RecipeError(f"step registry entry {name!r} -> {target} is not a registered step")
    return cast(Step, fn)


def validate_step(spec: StepSpec) -> StepConfig:
    """The step's typed config, or a RecipeError naming the step and the field."""
    return get_step(spec.name).config_cls.parse(spec.params, what=f"step {spec.name!r}")
