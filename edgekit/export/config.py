"""Exporter configs: one frozen, typed model per format, and :class:`ExportOptions` holding one of each.

What each format can be told lives here, importable without the exporter (no TensorFlow, no
onnxruntime): the CLI and :class:`edgekit.options.CompressOptions` build these, the exporter in
``edgekit/export/<format>.py`` receives its own. A bad value is a RecipeError naming the field::

    ExportOptions.parse({"tflite": {"io": "int4"}}, what="export")
    # RecipeError: export: tflite.io: Input should be 'float' or 'int8' (given 'int4')
"""

from __future__ import annotations

from pydantic import Field

from edgekit.choices import Format, Objective, OrtTarget, StrChoice
from edgekit.config import FrozenConfig

__all__ = ["ExportConfig", "ExportOptions", "Objective", "OnnxConfig", "OrtConfig", "OrtTarget", "TfliteConfig", "TfliteIO"]


class ExportConfig(FrozenConfig):
    """Base of every exporter's config."""


class OnnxConfig(ExportConfig):
    """The ``.onnx`` artifact takes no options: it is always stored compactly (:mod:`edgekit.export.compact`)."""


class OrtConfig(ExportConfig):
    """How the ``.ort`` is built: ORT's converter with fixed optimizations for one target platform."""

    target: OrtTarget = Field(OrtTarget.ARM, description="The CPU the .ort runs on: arm (default; loads everywhere) or amd64 "
                                                         "(x86-64 only: NCHWc float kernels, ~2x faster float layers there).")


class TfliteIO(StrChoice):
    """Input/output tensor type of a full-integer int8 ``.tflite``."""

    FLOAT = "float"  # callers never quantize
    INT8 = "int8"  # for integer-only accelerators


class TfliteConfig(ExportConfig):
    """How the ``.tflite`` is converted (:mod:`edgekit.export.tflite`)."""

    io: TfliteIO = Field(TfliteIO.FLOAT, description="Input/output type of a full-integer int8 .tflite: float or int8.")
    calib_samples: int = Field(256, ge=1, description="Representative samples TFLiteConverter calibrates a full-integer model on.")
    strip: bool = Field(True, description="Drop what LiteRT never reads (tensor names, description, min/max) when outputs stay bit-identical.")
    per_channel: bool | None = Field(None, description="Full-integer weights: True per channel, False per tensor, "
                                                       "None converts both and ships per-tensor only if as accurate and as fast.")
    objective: Objective = Field(Objective.BALANCED, description="Full-integer int8: which measured variant ships (latency, size, "
                                                                 "balanced: fastest within 0.35x the float size that is as fast as float).")
    search: bool = Field(True, description="Full-integer int8: keep ops float where int8 is slower or too inaccurate, measured against "
                                           "the float .tflite; False ships the whole-model int8 conversion.")


class ExportOptions(FrozenConfig):
    """One config per format; a run uses the configs of the formats it writes."""

    onnx: OnnxConfig = Field(default_factory=OnnxConfig, description="The .onnx artifact.")
    ort: OrtConfig = Field(default_factory=OrtConfig, description="The .ort artifact (ONNX Runtime Mobile).")
    tflite: TfliteConfig = Field(default_factory=TfliteConfig, description="The .tflite artifact (LiteRT).")

    def for_format(self, fmt: Format) -> ExportConfig:
        """The config of ``fmt``'s exporter."""
        config: ExportConfig = getattr(self, Format(fmt).value)
        return config
