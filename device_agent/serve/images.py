"""``image/jpeg`` and ``image/png`` bodies, decoded on the device for a model that takes raw images.

A model compressed with ``--preprocess`` has the resize, crop and normalisation baked into its graph
and takes raw RGB ``uint8 [N, H, W, 3]`` (:mod:`edgekit.preprocess`). Such a model can be sent the
photo itself: Pillow decodes it here (an optional agent dependency: ``pip install
'edgekit[agent-images]'``), applies the EXIF orientation a camera recorded and converts to RGB.
Nothing is resized here: a model baked for any size takes the image as it is; one baked for a
fixed size refuses another size and says which it takes.

The decoded size is checked from the image header before any pixel is decoded: a small file that
would inflate past ``[api] max_elements`` (a decompression bomb) is refused unread.

A colour or grey JPEG that needs no turning is decoded by simplejpeg when it is installed (it is in the
``agent-images`` extra): the same libjpeg-turbo decoder with the same settings as Pillow's, so the same
pixels, written straight into the array; Pillow would decode into its own 4-byte pixels and copy them
out again (~0.7 ms of ~2.2 ms for a 640x480 photo). Any other image, or no simplejpeg, goes through Pillow.
"""

from __future__ import annotations

import importlib
import io
import warnings
from functools import cache
from types import ModuleType
from typing import Any

import numpy as np

from device_agent.contract.errors import InvalidInput, PayloadTooLarge
from device_agent.contract.manifest import TensorSpec
from device_agent.contract.types import Array

__all__ = ["IMAGE_TYPES", "INSTALL_HINT", "decode_image", "raw_image_input"]

IMAGE_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG"}
_ORIENTATION = 0x0112  # the EXIF tag a camera records how to turn the picture in
INSTALL_HINT = ("image bodies need Pillow on the device: pip install 'edgekit[agent-images]' (a bundle: install.sh --with-images; "
                "or /opt/edgekit-agent/venv/bin/pip install Pillow)")


def raw_image_input(inputs: tuple[TensorSpec, ...]) -> TensorSpec | None:
    """The model's raw image input (its only input, ``uint8 [N, H, W, 3]``), or None when it takes something else."""
    if len(inputs) != 1:
        return None
    s = inputs[0]
    return s if s.dtype == "uint8" and len(s.shape) == 4 and s.shape[3] == 3 else None


def _pillow() -> ModuleType:
    try:
        from PIL import Image
    except ImportError:
        raise InvalidInput(INSTALL_HINT, kind="content_type", expected="Pillow installed", given="no Pillow") from None
    return Image


def decode_image(body: bytes | bytearray, ctype: str, spec: TensorSpec, *, max_elements: int, resize_short: int | None = None) -> Array:
    """One ``image/jpeg`` or ``image/png`` body as a batch of one: ``uint8 [1, H, W, 3]``, RGB, upright.

    ``resize_short``: the baked graph's first resize (the short side to that many pixels, aspect kept); a sliver of an
    image (1 x 60,000) would grow into billions of values there, so the resized size is held to ``max_elements`` too."""
    image = _pillow()
    fmt = IMAGE_TYPES[ctype]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", image.DecompressionBombWarning)
            img = image.open(io.BytesIO(body), formats=[fmt])  # reads the header only
            w, h = img.size
            if w * h * 3 > max_elements:
                raise PayloadTooLarge(f"the {fmt} image is {w}x{h}, {w * h * 3:,} values decoded; this agent accepts at most {max_elements:,} "
                                      "([api] max_elements): send a smaller image or raise the limit",
                                      kind="too_large", input=spec.name, expected=f"≤ {max_elements} values", given=f"{w}x{h}")
            _check_resized(w, h, resize_short, max_elements, spec.name)
            x = _pixels(img, body)
    except (InvalidInput, MemoryError):
        raise
    except Exception as e:  # Pillow raises many kinds for a bad file (OSError, SyntaxError, ValueError, DecompressionBombError...)
        raise InvalidInput(f"the body is not a readable {fmt} image ({type(e).__name__}: {e}); send the file's bytes as {ctype}",
                           kind="malformed", input=spec.name, expected=ctype, given=type(e).__name__) from None
    want = spec.shape[1:3]
    if all(isinstance(d, int) and d >= 0 for d in want) and tuple(x.shape[:2]) != tuple(want):
        raise InvalidInput(f"input {spec.name!r} takes {want[0]}x{want[1]} images (H x W; the model was baked for that size); the image is "
                           f"{x.shape[0]}x{x.shape[1]}. Resize it on the client, or compress the model without raw_size to take any size",
                           kind="shape", input=spec.name, expected=f"{want[0]}x{want[1]}", given=f"{x.shape[0]}x{x.shape[1]}")
    return x[None]


def _check_resized(w: int, h: int, resize_short: int | None, max_elements: int, name: str) -> None:
    if resize_short is None or not w or not h:
        return
    short = min(h, w)  # as the baked graph computes it (edgekit.preprocess.spec.ImageSpec.resized_size)
    rh, rw = (h * 2 * resize_short + short) // (2 * short), (w * 2 * resize_short + short) // (2 * short)
    if rh * rw * 3 > max_elements:
        raise PayloadTooLarge(f"the image is {w}x{h}; the model resizes its short side to {resize_short}, which makes it {rw}x{rh}, "
                              f"{rh * rw * 3:,} values, more than this agent accepts ({max_elements:,}, [api] max_elements): "
                              "send an image of a less extreme aspect ratio", kind="too_large", input=name,
                              expected=f"≤ {max_elements} values", given=f"{w}x{h}")


def _pixels(img: Any, body: bytes | bytearray) -> Array:
    """The opened image's pixels, uint8 [H, W, 3] RGB, upright."""
    turbo = _simplejpeg()
    if turbo is not None and img.format == "JPEG" and img.mode in ("RGB", "L") and img.getexif().get(_ORIENTATION, 1) == 1:
        # libjpeg-turbo's grey-to-RGB repeats the level, as Pillow's convert("RGB") does; strict: a corrupt file is an error
        return np.asarray(turbo.decode_jpeg(body, colorspace="RGB", strict=True))
    _upright(img)
    if img.mode != "RGB":  # grey, palette, RGBA, CMYK: what the model takes is RGB
        img = img.convert("RGB")
    return np.asarray(img)


@cache
def _simplejpeg() -> Any:
    """simplejpeg when installed, else None (Pillow decodes every image then)."""
    try:
        return importlib.import_module("simplejpeg")
    except ImportError:
        return None


def _upright(img: Any) -> None:
    """Turn the image as it was meant to be seen (the EXIF orientation a camera recorded), in place: without an
    orientation that is free, where a copy would cost as much as the decoding (~2 ms for 640x480)."""
    from PIL import ImageOps

    ImageOps.exif_transpose(img, in_place=True)
