"""The Python reference of the preprocessing: Pillow, step by step, as an application would write it.

The baked ONNX ops (:mod:`edgekit.preprocess.graph`) are checked against this function on real
images; it is also how a folder of images becomes float inputs when nothing is baked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.errors import DataError
from edgekit.preprocess.spec import ImageSpec

__all__ = ["IMAGE_SUFFIXES", "fit_raw", "load_rgb", "reference_input"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def _filter(name: str) -> int:
    from PIL import Image

    return {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC, "nearest": Image.Resampling.NEAREST}[name]


def load_rgb(path: Path) -> np.ndarray:
    """An image file as the raw input a device decodes it to: uint8 [H, W, 3], RGB."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except OSError as e:
        raise DataError(f"cannot read image {path}: {e}") from None


def fit_raw(raw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``raw`` brought to ``size`` (H, W) as a camera would frame it: the centre at that aspect ratio, resized (bilinear)."""
    from PIL import Image, ImageOps

    if raw.shape[:2] == tuple(size):
        return raw
    img = ImageOps.fit(Image.fromarray(raw, "RGB"), (size[1], size[0]), method=Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def reference_input(raw: np.ndarray, spec: ImageSpec, *, where: str = "image") -> np.ndarray:
    """One raw RGB image (uint8 [H, W, 3]) as the network's input (float32, [C, H, W] or [H, W, C]).

    ``spec`` has been completed for the model (:meth:`ImageSpec.for_model`): size, layout and one
    mean/std per channel are set.
    """
    from PIL import Image

    if spec.size is None or spec.layout is None:
        raise ValueError("complete the spec for the model first (ImageSpec.for_model)")
    img = Image.fromarray(np.ascontiguousarray(raw), "RGB")
    if spec.channels == "gray":
        img = img.convert("L")
    resample = _filter(spec.interpolation)
    if spec.resize_short is not None:
        h, w = spec.resized_size(img.height, img.width)
        img = img.resize((w, h), resample)
    if spec.center_crop is not None:
        ch, cw = spec.center_crop
        if img.height < ch or img.width < cw:
            raise DataError(f"{where} is {img.height}x{img.width}, smaller than center_crop {list(spec.center_crop)}; "
                            "add resize_short to the spec or use larger images")
        top, left = (img.height - ch) // 2, (img.width - cw) // 2
        img = img.crop((left, top, left + cw, top + ch))
    else:
        img = img.resize((spec.size[1], spec.size[0]), resample)
    a = np.asarray(img, dtype=np.float32)
    a = a[..., None] if a.ndim == 2 else a
    if spec.channels == "bgr":
        a = a[..., ::-1]
    a = (a * spec.scale - np.array(spec.mean, np.float32)) / np.array(spec.std, np.float32)
    return np.ascontiguousarray(a.transpose(2, 0, 1) if spec.layout == "NCHW" else a)
