"""The preprocessing as ONNX ops: raw uint8 RGB images [N, H, W, 3] in, the network's float input out.

Every node and initializer is named ``edgekit_pre/...`` (:data:`PREFIX`), so tools can find them:
the int8 search leaves them in float (pixel arithmetic is exact in float and costs little).

Two shapes of graph, one per kind of raw input:

- **fixed raw size** (``raw_size``): every size and crop offset is a constant. Resampling is
  Pillow's own tables (:mod:`edgekit.preprocess.resample`) applied with Gather + Mul + ReduceSum,
  columns then rows, each pass rounded half up to 0..255 as Pillow's 8-bit passes are: that runs
  identically under ONNX Runtime and LiteRT (which has no antialiased resize). Every Gather copies
  whole rows (the column pass gathers from the bytes laid out [N, W, C, H]): a Gather along the
  innermost axis copies element by element, ~7x the cost of the whole graph.
- **any size**: sizes and offsets are computed from ``Shape`` at run time and the resampling is
  ``Resize`` (opset 18; one over both axes for bilinear, rounded once: within a level of Pillow's two
  rounded passes; one per axis, each rounded, for bicubic and nearest) with the attributes that come
  closest to Pillow: ``antialias=1`` (the
  filter widens when downscaling, as Pillow's does), ``half_pixel`` centres, ``cubic_coeff_a=-0.5``
  (Pillow's bicubic), ``exclude_outside=1`` (weights renormalised at the border, as Pillow does),
  ``half_pixel`` + ``round_prefer_ceil`` for nearest (Pillow samples ``floor((x + 0.5) * in/out)``; where
  that lands exactly on a pixel edge Pillow's accumulated double may pick the neighbour, so a few
  columns can differ). ONNX Runtime runs it; LiteRT cannot (no antialiased resize builtin), so a
  ``.tflite`` needs ``raw_size``.

Grey is Pillow's ITU-R 601 luma in integers (``(19595 R + 38470 G + 7471 B + 32768) >> 16``),
exact in float32; normalisation folds ``(p * scale - mean) / std`` into one Mul and one Add.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgekit.preprocess import PREFIX
from edgekit.preprocess.resample import pass_table
from edgekit.preprocess.spec import ImageSpec

__all__ = ["PREFIX", "PreGraph", "build"]


class PreGraph:
    """Nodes and initializers being appended, each named under :data:`PREFIX`."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, value: np.ndarray) -> str:
        full = f"{PREFIX}const/{name}"
        self.inits.append(numpy_helper.from_array(value, full))
        return full

    def op(self, op_type: str, inputs: list[str], name: str, **attrs: object) -> str:
        out = f"{PREFIX}{name}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def shared(self, name: str, value: np.ndarray) -> str:
        """A constant used in several places, stored once."""
        full = f"{PREFIX}const/{name}"
        return full if any(i.name == full for i in self.inits) else self.const(name, value)

    def round8(self, x: str, name: str, *, clip: bool = True) -> str:
        """Round half up and clip to 0..255: what Pillow stores after each 8-bit pass. ``clip=False`` where the
        values cannot leave 0..255 (a weighted mean with non-negative weights: bilinear)."""
        half = self.shared("half", np.array(0.5, np.float32))
        floor = self.op("Floor", [self.op("Add", [x, half], f"{name}/add_half")], f"{name}/floor")
        if not clip:
            return floor
        return self.op("Clip", [floor, self.shared("zero", np.array(0.0, np.float32)), self.shared("max255", np.array(255.0, np.float32))],
                       f"{name}/clip")


def build(spec: ImageSpec, raw: str, out: str, raw_size: tuple[int, int] | None) -> PreGraph:
    """The preprocessing from graph input ``raw`` (uint8 NHWC RGB) to tensor ``out`` (the network's input).

    ``spec`` is complete for the model (:meth:`ImageSpec.for_model`); ``raw_size`` None builds the any-size graph.
    """
    g = PreGraph()
    x = _fixed(g, raw, spec, raw_size) if raw_size is not None else _any_size(g, _opening(g, raw, spec, bytes_first=True), spec)
    c = 1 if spec.channels == "gray" else 3
    mul = (spec.scale / np.array(spec.std, np.float64)).astype(np.float32).reshape(1, c, 1, 1)
    add = (-np.array(spec.mean, np.float64) / np.array(spec.std, np.float64)).astype(np.float32).reshape(1, c, 1, 1)
    x = g.op("Mul", [x, g.const("norm/mul", mul)], "norm/scale")
    if spec.layout == "NHWC":
        x = g.op("Add", [x, g.const("norm/add", add)], "norm/shift")
        g.nodes.append(helper.make_node("Transpose", [x], [out], name=f"{PREFIX}to_nhwc", perm=[0, 2, 3, 1]))
    else:
        g.nodes.append(helper.make_node("Add", [x, g.const("norm/add", add)], [out], name=f"{PREFIX}norm/shift"))
    return g


def _opening(g: PreGraph, raw: str, spec: ImageSpec, *, bytes_first: bool) -> str:
    """The raw image as float NCHW in the network's channels. ``bytes_first``: transposed as bytes, then widened (a
    quarter of ORT's memory traffic); else widened first (LiteRT transposes and slices floats several times faster)."""
    if bytes_first:
        x = g.op("Cast", [g.op("Transpose", [raw], "to_nchw", perm=[0, 3, 1, 2])], "cast", to=TensorProto.FLOAT)
    else:
        x = g.op("Transpose", [g.op("Cast", [raw], "cast", to=TensorProto.FLOAT)], "to_nchw", perm=[0, 3, 1, 2])
    if spec.channels == "gray":
        return _luma(g, x)
    if spec.channels == "bgr":
        return g.op("Gather", [x, g.const("bgr", np.array([2, 1, 0], np.int64))], "bgr", axis=1)
    return x


def _fixed(g: PreGraph, raw: str, spec: ImageSpec, raw_size: tuple[int, int]) -> str:
    """Resize/crop with every size known: Pillow's tables, columns then rows; plain crops as Slice.

    Gathering along the innermost axis copies one element at a time (~25 ms of ORT time for 640x480 -> 224), so the
    column pass reads its taps from the image laid out [N, W, C, H] as bytes (whole rows per tap) and puts them back
    as [N, C, H, out, K] with a 2-D transpose: the Mul and ReduceSum then see the very tensor they saw when the taps
    were gathered from NCHW, so the float sums (whose order depends on that layout) and every output are unchanged."""
    assert spec.size is not None
    h, w = raw_size
    if spec.resize_short is not None or spec.center_crop is None:
        nh, nw = spec.resized_size(h, w) if spec.resize_short is not None else spec.size
    else:
        nh, nw = h, w
    ch, cw = spec.center_crop or (nh, nw)
    top, left = (nh - ch) // 2, (nw - cw) // 2
    if w == nw:  # Pillow skips a pass that keeps the size; a crop is then a slice
        cols = _opening(g, raw, spec, bytes_first=False)  # the .tflite's opening: LiteRT slices bytes ~7x slower than floats
        if cw != w:
            cols = g.op("Slice", [cols, g.const("cols/start", np.array([left], np.int64)), g.const("cols/end", np.array([left + cw], np.int64)),
                                  g.const("cols/axis", np.array([3], np.int64))], "cols/crop")
    else:  # [N, H, W, C] -> [N, W, C, H] moves one axis (H, innermost): ORT runs it as a 2-D transpose of [H, W*C] bytes
        x = g.op("Transpose", [_levels(g, raw, spec, raw_size)], "to_nwch", perm=[0, 2, 3, 1])
        x = x if spec.channels != "bgr" else g.op("Gather", [x, g.const("bgr", np.array([2, 1, 0], np.int64))], "bgr", axis=2)
        cols = _cols_pass(g, x, (1 if spec.channels == "gray" else 3, h), w, nw, range(left, left + cw), spec=spec)
    return _rows_pass(g, cols, h, nh, range(top, top + ch), spec=spec)


def _levels(g: PreGraph, raw: str, spec: ImageSpec, raw_size: tuple[int, int]) -> str:
    """The image as uint8 NHWC levels in what the passes resample: the raw RGB bytes, or Pillow's luma ([N, H, W, 1])."""
    if spec.channels != "gray":
        return raw
    # weighed and summed over NCHW (a broadcast along the innermost axis costs ORT ~5 ms): [N, 1, H, W] is [N, H, W, 1] in memory
    x = g.op("Cast", [_opening(g, raw, spec, bytes_first=False)], "gray/levels", to=TensorProto.UINT8)  # whole levels: exact as bytes
    return g.op("Reshape", [x, g.const("gray/nhwc", np.array([-1, *raw_size, 1], np.int64))], "gray/nhwc")


def _luma(g: PreGraph, x: str) -> str:
    """Pillow's grey of float NCHW RGB ``x``: [N, 1, H, W], rounded to whole levels."""
    luma = g.const("luma", (np.array([19595, 38470, 7471], np.float32) / 65536).reshape(1, 3, 1, 1))
    x = g.op("ReduceSum", [g.op("Mul", [x, luma], "gray/weigh"), g.const("axis1", np.array([1], np.int64))], "gray/sum", keepdims=1)
    return g.round8(x, "gray")


def _cols_pass(g: PreGraph, x: str, ch_h: tuple[int, int], n_in: int, n_out: int, keep: range, *, spec: ImageSpec) -> str:
    """The column pass from uint8 ``x`` [N, W, C, H] (``ch_h`` = (C, H)) to float [N, C, H, len(keep)]."""
    idx, weights = pass_table(n_in, n_out, spec.interpolation, keep=keep)
    idx = idx[:, 0] if spec.interpolation == "nearest" else idx
    taps = g.op("Gather", [x, g.const("cols/index", idx)], "cols/taps", axis=1)  # [N, out, (K,) C, H]: H bytes per copy
    flat = g.op("Reshape", [taps, g.const("cols/flat", np.array([-1, idx.size, ch_h[0] * ch_h[1]], np.int64))], "cols/flat")
    back = g.op("Transpose", [flat], "cols/to_nchw", perm=[0, 2, 1])
    taps = g.op("Reshape", [back, g.const("cols/shape", np.array([-1, *ch_h, *idx.shape], np.int64))], "cols/nchw")
    taps = g.op("Cast", [taps], "cols/cast", to=TensorProto.FLOAT)
    if spec.interpolation == "nearest":
        return taps
    weighed = g.op("Mul", [taps, g.const("cols/weights", weights)], "cols/weigh")  # taps [N, C, H, out, K] by [out, K]
    summed = g.op("ReduceSum", [weighed, g.const("cols/sum_axis", np.array([4], np.int64))], "cols/sum", keepdims=0)
    return g.round8(summed, "cols", clip=spec.interpolation == "bicubic")  # bilinear means of 0..255 stay in 0..255


def _rows_pass(g: PreGraph, x: str, n_in: int, n_out: int, keep: range, *, spec: ImageSpec) -> str:
    """The row pass along axis 2 of float NCHW ``x`` (each tap a whole row), keeping output positions ``keep``."""
    if n_in == n_out:  # Pillow skips a pass that keeps the size; a crop is then a slice
        if len(keep) == n_in:
            return x
        return g.op("Slice", [x, g.const("rows/start", np.array([keep.start], np.int64)), g.const("rows/end", np.array([keep.stop], np.int64)),
                              g.const("rows/axis", np.array([2], np.int64))], "rows/crop")
    idx, weights = pass_table(n_in, n_out, spec.interpolation, keep=keep)
    if spec.interpolation == "nearest":
        return g.op("Gather", [x, g.const("rows/index", idx[:, 0])], "rows/nearest", axis=2)
    taps = g.op("Gather", [x, g.const("rows/index", idx)], "rows/taps", axis=2)  # [N, C, out, K, W], weighed by [out, K, 1]
    weighed = g.op("Mul", [taps, g.const("rows/weights", weights[:, :, None])], "rows/weigh")
    summed = g.op("ReduceSum", [weighed, g.const("rows/sum_axis", np.array([3], np.int64))], "rows/sum", keepdims=0)
    return g.round8(summed, "rows", clip=spec.interpolation == "bicubic")


def _any_size(g: PreGraph, x: str, spec: ImageSpec) -> str:
    """Resize/crop with sizes from the image's shape at run time (ONNX Resize, opset 18)."""
    assert spec.size is not None
    shape = g.op("Shape", [x], "shape")
    h = g.op("Gather", [shape, g.const("h_index", np.array([2], np.int64))], "h", axis=0)
    w = g.op("Gather", [shape, g.const("w_index", np.array([3], np.int64))], "w", axis=0)
    if spec.resize_short is not None:
        two_s = g.const("two_short", np.array([2 * spec.resize_short], np.int64))
        short = g.op("Min", [h, w], "short")
        den = g.op("Mul", [short, g.const("two", np.array([2], np.int64))], "short_x2")
        nh = g.op("Div", [g.op("Add", [g.op("Mul", [h, two_s], "h_x2s"), short], "h_num"), den], "resized_h")
        nw = g.op("Div", [g.op("Add", [g.op("Mul", [w, two_s], "w_x2s"), short], "w_num"), den], "resized_w")
        if spec.interpolation == "bilinear":
            return _resize_once(g, x, nh, nw, spec)
        if spec.center_crop is None:
            return _resize(g, _resize(g, x, nw, 3, spec), nh, 2, spec)
        # the rows pass works column by column: the columns the crop drops are dropped before it (the same pixels, less work)
        x = _resize(g, x, nw, 3, spec, keep=spec.center_crop[1])
        return _resize(g, x, nh, 2, spec, keep=spec.center_crop[0])
    elif spec.center_crop is None:
        size_h, size_w = g.const("size_h", np.array([spec.size[0]], np.int64)), g.const("size_w", np.array([spec.size[1]], np.int64))
        if spec.interpolation == "bilinear":
            return _resize_once(g, x, size_h, size_w, spec)
        return _resize(g, _resize(g, x, size_w, 3, spec), size_h, 2, spec)
    shape2 = g.op("Shape", [x], "resized_shape")
    hw = g.op("Gather", [shape2, g.const("hw_index", np.array([2, 3], np.int64))], "resized_hw", axis=0)
    crop = g.const("crop", np.array(spec.center_crop, np.int64))
    start = g.op("Div", [g.op("Sub", [hw, crop], "margin"), g.const("two_2", np.array([2, 2], np.int64))], "crop_start")
    end = g.op("Add", [start, crop], "crop_end")
    return g.op("Slice", [x, start, end, g.const("crop_axes", np.array([2, 3], np.int64))], "crop")


def _resize_once(g: PreGraph, x: str, nh: str, nw: str, spec: ImageSpec) -> str:
    """Bilinear in one Resize over both axes, then the centre crop, then one rounding to levels.

    One two-axis Resize takes ~1 ms less than two one-axis ones under onnxruntime on a 640x480 photo
    (3.9 vs 4.8 ms, 1 thread), though the second pass then runs over the columns the crop drops. Pillow
    rounds between its two passes and this graph does not: the intermediate rounding moves a value by at
    most half a level, which the triangle filter's non-negative weights (summing to one) carry through
    unamplified, so each pixel stays within one level of Pillow's (MAX_LEVELS). Bicubic's negative lobes
    would amplify it (5 levels measured), so bicubic keeps its two rounded passes."""
    shape = g.op("Shape", [x], "both/in_shape")
    lead = g.op("Slice", [shape, g.shared("zero_i64", np.array([0], np.int64)), g.const("both/lead_end", np.array([2], np.int64))],
                "both/lead")
    sizes = g.op("Concat", [lead, nh, nw], "both/sizes", axis=0)
    y = g.op("Resize", [x, "", "", sizes], "both/resize", mode="linear", antialias=1, exclude_outside=1,
             coordinate_transformation_mode="half_pixel")
    if spec.center_crop is not None:
        y = _crop(g, _crop(g, y, nw, spec.center_crop[1], 3, "crop_w"), nh, spec.center_crop[0], 2, "crop_h")
    return g.round8(y, "both", clip=False)  # a weighted mean with non-negative weights stays in 0..255


def _crop(g: PreGraph, x: str, size: str, keep: int, axis: int, name: str) -> str:
    """The centre ``keep`` positions of ``axis``, whose length is the tensor ``size`` ([1] int64)."""
    start = g.op("Div", [g.op("Sub", [size, g.const(f"{name}/keep", np.array([keep], np.int64))], f"{name}/margin"),
                         g.shared("two", np.array([2], np.int64))], f"{name}/start")
    end = g.op("Add", [start, g.const(f"{name}/keep_end", np.array([keep], np.int64))], f"{name}/end")
    return g.op("Slice", [x, start, end, g.const(f"{name}/axis", np.array([axis], np.int64))], name)


def _resize(g: PreGraph, x: str, size: str, axis: int, spec: ImageSpec, *, keep: int | None = None) -> str:
    """One resampling pass along ``axis`` to ``size`` ([1] int64), then the centre ``keep`` positions of it if given.

    The crop comes before the rounding to levels: the same values, rounded on the part that is kept only."""
    name = "cols" if axis == 3 else "rows"
    sizes = _full_sizes(g, x, size, axis, name)
    if spec.interpolation == "nearest":
        # half_pixel + round_prefer_ceil samples floor((x + 0.5) * in/out), as Pillow does (ties aside: see the module doc)
        y = g.op("Resize", [x, "", "", sizes], f"{name}/resize", mode="nearest",
                 coordinate_transformation_mode="half_pixel", nearest_mode="round_prefer_ceil")
        return y if keep is None else _crop(g, y, size, keep, axis, f"crop_{'w' if axis == 3 else 'h'}")
    mode = "linear" if spec.interpolation == "bilinear" else "cubic"
    y = g.op("Resize", [x, "", "", sizes], f"{name}/resize", mode=mode, antialias=1, cubic_coeff_a=-0.5,
             exclude_outside=1, coordinate_transformation_mode="half_pixel")
    y = y if keep is None else _crop(g, y, size, keep, axis, f"crop_{'w' if axis == 3 else 'h'}")
    return g.round8(y, name, clip=mode == "cubic")  # the triangle filter's weights are non-negative: its means stay in 0..255


def _full_sizes(g: PreGraph, x: str, size: str, axis: int, name: str) -> str:
    """Resize's ``sizes`` for every axis of ``x``: its own sizes, ``size`` ([1] int64) at ``axis``.

    Not the ``axes`` attribute: onnxruntime's transpose optimizer, pushing an NHWC network's Transpose up through
    a Resize that has ``axes``, leaves it an empty ``sizes`` and the model fails to load ("Number of elements of
    input 'sizes' (0) does not match the number of axes")."""
    shape = g.op("Shape", [x], f"{name}/in_shape")
    parts = [g.op("Slice", [shape, g.shared("zero_i64", np.array([0], np.int64)), g.const(f"{name}/lead_end", np.array([axis], np.int64))],
                  f"{name}/lead"), size]
    if axis < 3:
        parts.append(g.op("Slice", [shape, g.const(f"{name}/tail_start", np.array([axis + 1], np.int64)),
                                    g.shared("four_i64", np.array([4], np.int64))], f"{name}/tail"))
    return g.op("Concat", parts, f"{name}/sizes", axis=0)
