"""Image preprocessing in the artifact: the spec, its ONNX ops, its Pillow reference, and baking one into a model.

- :mod:`~edgekit.preprocess.spec`: ``--preprocess spec.yaml`` as an :class:`ImageSpec`;
- :mod:`~edgekit.preprocess.resample`: Pillow's resampling windows and weights, as tables;
- :mod:`~edgekit.preprocess.graph`: the ONNX ops (named ``edgekit_pre/...``), fixed size or any size;
- :mod:`~edgekit.preprocess.pillow`: the Python reference the ops are checked against;
- :mod:`~edgekit.preprocess.bake`: the ops put in front of a model's image input.
"""

from __future__ import annotations

from edgekit.preprocess.spec import INTERPOLATIONS, ImageSpec

__all__ = ["INTERPOLATIONS", "PREFIX", "ImageSpec"]

#: every node and initializer of the baked preprocessing is named under this prefix (int8 leaves them in float)
PREFIX = "edgekit_pre/"
