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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from pydantic import BaseModel, ConfigDict, ValidationError

from device_agent.contract.manifest import TensorSpec
from edgekit.data import Dataset
from edgekit.errors import RecipeError

__all__ = ["STEPS", "Context", "StepConfig", "StepOutcome", "StepSpec", "get_step", "step", "validate_step"]


class StepConfig(BaseModel):
    """Base of every step config: typed, frozen, unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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
    """What steps share: the data, the source's reference outputs, where to work, how to report."""

    source_path: Path
    workdir: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    classifier: bool
    eval_data: Dataset
    calib_data: Dataset | None
    ref_outputs: dict[str, np.ndarray]
    ref_accuracy: float | None
    threads: int = 1
    train_data: Dataset | None = None
    progress: Callable[[str, float], None] = lambda msg, frac: None
    say: Callable[[str], None] = lambda msg: None
    notes: list[str] = field(default_factory=list)
    #: the artifact formats the run will write: a step choosing between models judges them as they will ship
    formats: tuple[str, ...] = ("onnx", "ort")

    @property
    def first_output(self) -> str:
        return self.outputs[0].name

    @property
    def data_given(self) -> bool:
        return not self.eval_data.generated


@dataclass
class StepOutcome:
    """A step's new model, the precision it leaves, and what to record in the manifest."""

    model: onnx.ModelProto
    precision: str | None = None  # None: unchanged
    record: dict[str, Any] = field(default_factory=dict)
    artifact_extra: dict[str, Any] = field(default_factory=dict)  # e.g. session_config for the runtime
    tag: str | None = None  # file name tag, e.g. "int8" -> model.int8.onnx
    failed_bound: str | None = None  # set when an accuracy bound was not met (exit 3 after writing)
    #: another model for one export format, with that artifact's extra: the int8 search may find a different
    #: candidate fastest as .ort than as .onnx (an .ort is not re-optimized at load), and each ships the best
    format_models: dict[str, tuple[onnx.ModelProto, dict[str, Any]]] = field(default_factory=dict)


def step(name: str, config_cls: type[StepConfig]) -> Callable:
    """Mark a function as the step ``name`` with config ``config_cls``."""

    def deco(fn: Callable) -> Callable:
        fn.step_name = name  # type: ignore[attr-defined]
        fn.config_cls = config_cls  # type: ignore[attr-defined]
        return fn

    return deco


def get_step(name: str) -> Callable:
    target = STEPS.get(name)
    if target is None:
        near = difflib.get_close_matches(name, list(STEPS), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise RecipeError(f"unknown step {name!r}{hint} Known: {', '.join(sorted(STEPS))}")
    module, attr = target.split(":")
    fn = getattr(importlib.import_module(module), attr)
    if getattr(fn, "step_name", None) != name:
        raise RecipeError(f"step registry entry {name!r} -> {target} is not a registered step")
    return fn


def validate_step(spec: StepSpec) -> StepConfig:
    """The step's typed config, or a RecipeError naming the step and the field."""
    fn = get_step(spec.name)
    try:
        return fn.config_cls(**spec.params)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "(config)"
            if err["type"] == "extra_forbidden":
                allowed = ", ".join(sorted(fn.config_cls.model_fields))
                near = difflib.get_close_matches(str(err["loc"][-1]), list(fn.config_cls.model_fields), n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                problems.append(f"unknown field {loc!r}{hint}; allowed: {allowed}")
            else:
                problems.append(f"{loc}: {err['msg']} (given {err.get('input')!r})")
        raise RecipeError(f"step {spec.name!r}: " + "; ".join(problems)) from None
