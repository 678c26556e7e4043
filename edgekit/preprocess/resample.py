"""Pillow's resampling, as tables: for each output pixel, which input pixels and with which weights.

Pillow resizes an 8-bit image in two separable passes (columns, then rows), each output pixel a
weighted sum of the input pixels under a filter whose support widens with the downscale factor
(that is its antialiasing), the weights normalised where the window meets the border, stored as
22-bit fixed point, and the sum rounded half up and clipped to 0..255. :func:`pass_table` computes
the same window and weights (``libImaging/Resample.c``: ``precompute_coeffs`` and
``normalize_coeffs_8bpc``), so a Gather + Mul + ReduceSum graph over them reproduces Pillow for a
fixed image size on any runtime (LiteRT has no antialiased resize; a dense matrix product would
cost a hundred times the work). NEAREST is Pillow's affine sampling: ``x * in/out`` accumulated in a double
from half a step, truncated (the accumulated rounding decides exact ties, so it is replayed).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

__all__ = ["PRECISION_BITS", "pass_table"]

#: Pillow's fixed-point precision for 8-bit resampling (32 - 8 - 2)
PRECISION_BITS = 22
_SUPPORT = {"bilinear": 1.0, "bicubic": 2.0}


def _bilinear(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


def _bicubic(x: float) -> float:
    a = -0.5  # Pillow's cubic coefficient
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


_FILTERS: dict[str, Callable[[float], float]] = {"bilinear": _bilinear, "bicubic": _bicubic}


def pass_table(in_size: int, out_size: int, interpolation: str, *, keep: range | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(indices [out, K] int64, weights [out, K] float32) of one resampling pass from ``in_size`` to ``out_size``.

    ``keep`` limits the table to those output positions (a centre crop taken right after the
    resize): each output pixel depends only on its own window, so the others need not be computed.
    Unused window slots point at pixel 0 with weight 0.
    """
    rows = keep if keep is not None else range(out_size)
    if interpolation == "nearest":
        # Pillow's affine sampler adds in/out per pixel to a double, from half a step: the sum's rounding decides ties
        step, pos, picks = in_size / out_size, in_size / out_size * 0.5, []
        for _ in range(out_size):
            picks.append(min(in_size - 1, int(pos)))
            pos += step
        idx = np.array([[picks[x]] for x in rows], dtype=np.int64)
        return idx, np.ones(idx.shape, np.float32)
    filt, support0 = _FILTERS[interpolation], _SUPPORT[interpolation]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = support0 * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    idx = np.zeros((len(rows), ksize), np.int64)
    weights = np.zeros((len(rows), ksize), np.float64)
    for r, xx in enumerate(rows):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        w = np.array([filt((x + xmin - center + 0.5) / filterscale) for x in range(xmax)])
        total = w.sum()
        if total != 0.0:
            w = w / total
        idx[r, :xmax] = np.arange(xmin, xmin + xmax)
        weights[r, :xmax] = w
    # Pillow stores the weights as 22-bit fixed point, rounded away from zero
    fixed = np.where(weights < 0, np.ceil(weights * (1 << PRECISION_BITS) - 0.5), np.floor(weights * (1 << PRECISION_BITS) + 0.5))
    return idx, (fixed / (1 << PRECISION_BITS)).astype(np.float32)
