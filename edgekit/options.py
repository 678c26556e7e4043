"""What one ``compress`` run does besides the model and the data: one frozen, typed options object.

::

    from edgekit import CompressOptions, StepSpec, compress

    options = CompressOptions(steps=(StepSpec("int8", {"max_drop": 0.5}),), formats=("onnx", "ort", "tflite"), output="out")
    result = compress("model.onnx", "calib.npz", options)

The CLI flags and recipes compile to the same object (:meth:`CompressOptions.from_recipe`). Values are
checked when it is built (``threads=0`` or ``formats=("onnx", "tf")`` raise); step parameters are
checked by their steps' configs before any work, exporter options by :class:`~edgekit.export.ExportOptions`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, InstanceOf, field_validator

from edgekit.choices import Format, Layout, Objective
from edgekit.config import FrozenConfig
from edgekit.data import ImageSpec
from edgekit.export.config import ExportOptions
from edgekit.pipeline import StepSpec
from edgekit.recipes.model import Recipe
from edgekit.reference import OriginCheck

__all__ = ["CompressOptions"]


class CompressOptions(FrozenConfig):
    """Steps, formats, where to write, how to measure, and what to record. Every field has a default."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    steps: tuple[InstanceOf[StepSpec], ...] = Field((), description="The pipeline, in order (quantization last); [] exports the model as it is.")
    formats: tuple[Format, ...] = Field((Format.ONNX, Format.ORT), min_length=1, description="Artifacts to write.")
    export: ExportOptions = Field(default_factory=ExportOptions, description="Each exporter's own options.")
    output: Path | None = Field(None, description="Output directory (default: MODEL.<tag>/ next to the model, e.g. model.int8/).")
    force: bool = Field(False, description="Replace the output directory if it exists.")
    eval_data: Path | None = Field(None, description="Held-out data for quality (default: a subset of the given data).")
    max_eval_samples: int = Field(2000, ge=1, description="Samples quality is measured on, at most.")
    data_desc: str | None = Field(None, description="What the data is, for the model card.")
    image_spec: InstanceOf[ImageSpec] | None = Field(None, description="How a folder of images becomes model inputs.")
    data_layout: Layout | None = Field(None, description="Layout of 4-D arrays in the data when it differs from the model's.")
    threads: int = Field(1, ge=1, description="Threads for evaluation, latency and training.")
    objective: Objective = Field(Objective.BALANCED, description="What the int8 search optimizes among accurate models: latency (the "
                                 "fastest), size (the smallest, even if slower than fp32) or balanced (the fastest within 0.35x the "
                                 "fp32 size, else the smallest that is not slower).")
    allow_mismatch: bool = Field(False, description="Keep artifacts whose parity check against their source fails.")
    name: str | None = Field(None, description="Model name in the manifest (default: the file's stem).")
    version: str | None = Field(None, description="Model version in the manifest (default: the UTC date-time).")
    recipe: InstanceOf[Recipe] | None = Field(None, description="The recipe the steps and formats were compiled from: recorded "
                                                                "resolved in the manifest, its data needs checked, its gates judged.")
    origin: dict[str, Any] | None = Field(None, description="What the ONNX model was exported from (PyTorch, TensorFlow), for the manifest.")
    origin_check: InstanceOf[OriginCheck] | None = Field(None, description="The model as the user ran it (a scikit-learn pipeline), which "
                                                                            "every artifact is also checked against (edgekit.importers sets it).")
    label: str | None = Field(None, description="The column of a table (--data .csv/.parquet) holding the true labels.")
    input_shapes: dict[str, tuple[int, ...]] = Field(default_factory=dict, description="Sizes of generated inputs (no data) by input "
                                                     "name, where the model leaves them symbolic (--input-shape).")

    @field_validator("formats")
    @classmethod
    def _unique(cls, v: tuple[Format, ...]) -> tuple[Format, ...]:
        twice = sorted({str(f) for f in v if v.count(f) > 1})
        if twice:
            raise ValueError(f"format(s) {', '.join(twice)} listed twice; keep one of each")
        return v

    @classmethod
    def from_recipe(cls, recipe: Recipe, **fields: Any) -> CompressOptions:
        """Options running ``recipe`` (its resolved steps and its formats), with any other field given."""
        return cls(**fields).with_recipe(recipe)

    def export_options(self) -> ExportOptions:
        """The exporters' configs as the run uses them: the run's ``objective`` also chooses the full-integer .tflite's
        variant, unless the ``TfliteConfig`` names an objective of its own (a recipe's ``objective: size`` and
        ``--objective`` reach the .tflite as they reach the ONNX Runtime int8 search)."""
        tflite = self.export.tflite
        if "objective" in tflite.model_fields_set or tflite.objective == self.objective:
            return self.export
        return self.export.model_copy(update={"tflite": tflite.model_copy(update={"objective": self.objective})})

    def with_recipe(self, recipe: Recipe) -> CompressOptions:
        """These options running ``recipe`` instead: its resolved steps, formats and objective, recorded and judged by its gates."""
        formats = tuple(Format(f) for f in recipe.export)  # the recipe loader has checked them: known, each once
        update: dict[str, Any] = {"steps": tuple(recipe.resolved_steps()), "formats": formats, "recipe": recipe}
        if recipe.objective is not None:
            update["objective"] = Objective(recipe.objective)
        return self.model_copy(update=update)
