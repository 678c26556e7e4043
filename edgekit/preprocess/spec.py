"""``--preprocess spec.yaml``: how a raw image becomes the network's input.

::

    size: [224, 224]            # the network's input H, W (default: read off the model)
    resize_short: 256           # resize so the short side is 256, aspect kept ...
    center_crop: [224, 224]     # ... then cut the centre (must equal size)
    interpolation: bilinear     # bilinear | bicubic | nearest (Pillow's filters)
    scale: 0.00392156862745098  # pixel * scale ...
    mean: [0.485, 0.456, 0.406] # ... - mean ...
    std: [0.229, 0.224, 0.225]  # ... / std, per channel
    channels: rgb               # rgb | bgr | gray: what the network takes (the raw image is always RGB)
    layout: NCHW                # NCHW | NHWC: the network's layout (default: read off the model)
    raw_size: [480, 640]        # the raw image's H, W; absent: any size (ONNX Runtime only)
    bake: true                  # false: the artifacts keep taking normalized tensors

The same spec drives the ONNX ops baked in front of the network (:mod:`edgekit.preprocess.graph`)
and the Python reference they are checked against (:mod:`edgekit.preprocess.pillow`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from edgekit.errors import DataError

__all__ = ["INTERPOLATIONS", "ImageSpec"]

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
_PAIRS = ("size", "center_crop", "raw_size")
_ALLOWED = ("size", "scale", "mean", "std", "channels", "layout", "resize_short", "center_crop", "interpolation", "raw_size", "bake")


@dataclass(frozen=True)
class ImageSpec:
    """How to turn an image into model inputs.

    ``size`` (H, W) defaults to the model's input; pixel values are ``(p * scale - mean) / std``
    per channel, in ``channels`` order (rgb, bgr or gray), laid out as the model expects. Before
    that, optionally ``resize_short`` (short side to that many pixels, aspect kept) and
    ``center_crop`` (H, W); without them the image is resized to ``size`` directly.
    """

    size: tuple[int, int] | None = None
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    channels: str = "rgb"
    layout: str | None = None  # NCHW / NHWC; default from the model's input shape
    resize_short: int | None = None
    center_crop: tuple[int, int] | None = None
    interpolation: str = "bilinear"
    raw_size: tuple[int, int] | None = None  # None: the baked artifacts take any image size (where the runtime can)
    bake: bool = True

    @classmethod
    def from_file(cls, path: str | Path) -> ImageSpec:
        p = Path(path)
        try:
            text = p.read_text()
            doc = json.loads(text) if p.suffix == ".json" else _yaml(text)
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read the preprocessing spec {p}: {e}") from None
        if doc is not None and not isinstance(doc, dict):
            raise DataError(f"{p}: a preprocessing spec is a mapping of keys ({', '.join(sorted(_ALLOWED))}), not {type(doc).__name__}")
        return cls.from_dict(doc or {}, where=str(p))

    @classmethod
    def from_dict(cls, doc: dict[str, Any], *, where: str = "preprocessing spec") -> ImageSpec:
        """A spec from a mapping (a YAML file, the manifest's ``preprocessing.spec``); DataError naming the key."""
        unknown = set(doc) - set(_ALLOWED)
        if unknown:
            raise DataError(f"{where}: unknown preprocessing key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(_ALLOWED))}")
        values = dict(doc)
        for key in ("size", "mean", "std", *_PAIRS):
            if key in values and values[key] is not None and not isinstance(values[key], (list, tuple)):
                values[key] = [values[key]] * (2 if key in _PAIRS else 1)
            if key in values and values[key] is not None:
                values[key] = tuple(values[key])
        try:
            spec = cls(**values)
        except TypeError as e:
            raise DataError(f"{where}: {e}") from None
        return spec.checked(where)

    def checked(self, where: str) -> ImageSpec:
        """This spec, or a DataError naming the key whose value is not allowed."""
        if self.channels not in ("rgb", "bgr", "gray"):
            raise DataError(f"{where}: channels is {self.channels!r}; allowed: rgb, bgr, gray")
        if self.layout not in (None, "NCHW", "NHWC"):
            raise DataError(f"{where}: layout is {self.layout!r}; allowed: NCHW, NHWC")
        if self.interpolation not in INTERPOLATIONS:
            raise DataError(f"{where}: interpolation is {self.interpolation!r}; allowed: {', '.join(INTERPOLATIONS)}")
        for key in _PAIRS:
            v = getattr(self, key)
            if v is not None and (len(v) != 2 or not all(isinstance(d, int) and d > 0 for d in v)):
                raise DataError(f"{where}: {key} is {list(v)}; give two positive whole numbers [H, W]")
        if self.resize_short is not None and (not isinstance(self.resize_short, int) or self.resize_short <= 0):
            raise DataError(f"{where}: resize_short is {self.resize_short!r}; give the short side in pixels, e.g. 256")
        if self.resize_short is not None and self.center_crop is None:
            raise DataError(f"{where}: resize_short keeps the aspect ratio, so the network's fixed H x W needs a center_crop too")
        if self.resize_short is not None and self.center_crop is not None and self.resize_short < min(self.center_crop):
            raise DataError(f"{where}: resize_short {self.resize_short} is smaller than center_crop {list(self.center_crop)}; "
                            "the crop must fit inside the resized image")
        if not isinstance(self.bake, bool):
            raise DataError(f"{where}: bake is {self.bake!r}; allowed: true, false")
        return self

    def for_model(self, size: tuple[int, int], layout: str, channels: int) -> ImageSpec:
        """This spec with the model's size and layout filled in and mean/std one value per channel."""
        spec = replace(self, size=self.size or size, layout=self.layout or layout)
        if spec.center_crop is not None and spec.center_crop != spec.size:
            raise DataError(f"center_crop {list(spec.center_crop)} differs from the network's input size {list(spec.size or ())}; "
                            "crop to the size the network takes")
        # the network's channel count decides gray or colour, as it always has; channels: bgr flips a colour image
        n = 1 if channels == 1 else 3
        return replace(spec, channels="gray" if n == 1 else ("bgr" if spec.channels == "bgr" else "rgb"),
                       mean=_per_channel(spec.mean, n), std=_per_channel(spec.std, n))

    def resized_size(self, h: int, w: int) -> tuple[int, int]:
        """The (H, W) after ``resize_short`` (integer arithmetic, rounding half up: the baked graph computes the same)."""
        s = self.resize_short
        if s is None:
            return h, w
        short = min(h, w)
        return (h * 2 * s + short) // (2 * short), (w * 2 * s + short) // (2 * short)

    def to_dict(self) -> dict[str, Any]:
        """The spec as the manifest records it (JSON-clean, every key)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def _per_channel(values: tuple[float, ...], n: int) -> tuple[float, ...]:
    """One value per channel: as given, or the given values repeated (a single mean serves every channel)."""
    vals = values if len(values) == n else values * n
    return tuple(float(v) for v in vals[:n])


def _yaml(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)
