"""The preprocessing as ONNX ops: raw uint8 RGB images [N, H, W, 3] in, the network's float input out.

Every node and initializer is named ``edgekit_pre/...`` (:data:`PREFIX`), so tools can find them:
the int8 search leaves them in float (pixel arithmetic is exact in float and costs little).

Two shapes of graph, one per kind of raw input:

- **fixed raw size** (``raw_size``): every size and crop offset is a constant. Resampling is
  Pillow's own tables (:mod:`edgekit.preprocess.resample`) applied with Gather + Mul + ReduceSum,
  columns then rows, each pass rounded half up to 0..255 as Pillow's 8-bit passes are: that runs
  identically under ONNX Runtime and LiteRT (which has no antialiased resize).
- **any size**: sizes and offsets are computed from ``Shape`` at run time and each pass is a
  ``Resize`` (opset 18) with the attributes that come closest to Pillow: ``antialias=1`` (the
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
    if raw_size is None:  # transposed as bytes, then widened: a quarter of the memory traffic of transposing floats
        x = g.op("Cast", [g.op("Transpose", [raw], "to_nchw", perm=[0, 3, 1, 2])], "cast", to=TensorProto.FLOAT)
    else:  # the fixed-size graph is also what onnx2tf reads for a .tflite: its Cast -> Transpose opening stays as it is
        x = g.op("Transpose", [g.op("Cast", [raw], "cast", to=TensorProto.FLOAT)], "to_nchw", perm=[0, 3, 1, 2])
    if spec.channels == "gray":
        luma = g.const("luma", (np.array([19595, 38470, 7471], np.float32) / 65536).reshape(1, 3, 1, 1))
        x = g.op("ReduceSum", [g.op("Mul", [x, luma], "gray/weigh"), g.const("axis1", np.array([1], np.int64))], "gray/sum", keepdims=1)
        x = g.round8(x, "gray")
    elif spec.channels == "bgr":
        x = g.op("Gather", [x, g.const("bgr", np.array([2, 1, 0], np.int64))], "bgr", axis=1)
    x = _fixed(g, x, spec, raw_size) if raw_size is not None else _any_size(g, x, spec)
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


def _fixed(g: PreGraph, x: str, spec: ImageSpec, raw_size: tuple[int, int]) -> str:
    """Resize/crop with every size known: Pillow's tables, columns then rows; plain crops as Slice."""
    assert spec.size is not None
    h, w = raw_size
    if spec.resize_short is not None or spec.center_crop is None:
        nh, nw = spec.resized_size(h, w) if spec.resize_short is not None else spec.size
    else:
        nh, nw = h, w
    ch, cw = spec.center_crop or (nh, nw)
    top, left = (nh - ch) // 2, (nw - cw) // 2
    cols = _pass(g, x, w, nw, range(left, left + cw), axis=3, spec=spec)
    return _pass(g, cols, h, nh, range(top, top + ch), axis=2, spec=spec)


def _pass(g: PreGraph, x: str, n_in: int, n_out: int, keep: range, *, axis: int, spec: ImageSpec) -> str:
    """One resampling pass along ``axis`` (3: columns, 2: rows), keeping output positions ``keep``."""
    name = "cols" if axis == 3 else "rows"
    if n_in == n_out:  # Pillow skips a pass that keeps the size; a crop is then a slice
        if len(keep) == n_in:
            return x
        return g.op("Slice", [x, g.const(f"{name}/start", np.array([keep.start], np.int64)),
                              g.const(f"{name}/end", np.array([keep.stop], np.int64)),
                              g.const(f"{name}/axis", np.array([axis], np.int64))], f"{name}/crop")
    idx, weights = pass_table(n_in, n_out, spec.interpolation, keep=keep)
    if spec.interpolation == "nearest":
        return g.op("Gather", [x, g.const(f"{name}/index", idx[:, 0])], f"{name}/nearest", axis=axis)
    taps = g.op("Gather", [x, g.const(f"{name}/index", idx)], f"{name}/taps", axis=axis)
    # columns: taps [N, C, H, out, K] weigh by [out, K]; rows: taps [N, C, out, K, W] weigh by [out, K, 1]
    wshape = weights if axis == 3 else weights[:, :, None]
    weighed = g.op("Mul", [taps, g.const(f"{name}/weights", wshape)], f"{name}/weigh")
    summed = g.op("ReduceSum", [weighed, g.const(f"{name}/sum_axis", np.array([axis + 1], np.int64))], f"{name}/sum", keepdims=0)
    return g.round8(summed, name)


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
        if spec.center_crop is None:
            return _resize(g, _resize(g, x, nw, 3, spec), nh, 2, spec)
        # the rows pass works column by column: the columns the crop drops are dropped before it (the same pixels, less work)
        x = _resize(g, x, nw, 3, spec, keep=spec.center_crop[1])
        return _resize(g, x, nh, 2, spec, keep=spec.center_crop[0])
    elif spec.center_crop is None:
        x = _resize(g, x, g.const("size_w", np.array([spec.size[1]], np.int64)), 3, spec)
        return _resize(g, x, g.const("size_h", np.array([spec.size[0]], np.int64)), 2, spec)
    shape2 = g.op("Shape", [x], "resized_shape")
    hw = g.op("Gather", [shape2, g.const("hw_index", np.array([2, 3], np.int64))], "resized_hw", axis=0)
    crop = g.const("crop", np.array(spec.center_crop, np.int64))
    start = g.op("Div", [g.op("Sub", [hw, crop], "margin"), g.const("two_2", np.array([2, 2], np.int64))], "crop_start")
    end = g.op("Add", [start, crop], "crop_end")
    return g.op("Slice", [x, start, end, g.const("crop_axes", np.array([2, 3], np.int64))], "crop")


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
    if spec.interpolation == "nearest":
        # half_pixel + round_prefer_ceil samples floor((x + 0.5) * in/out), as Pillow does (ties aside: see the module doc)
        y = g.op("Resize", [x, "", "", size], f"{name}/resize", axes=[axis], mode="nearest",
                 coordinate_transformation_mode="half_pixel", nearest_mode="round_prefer_ceil")
        return y if keep is None else _crop(g, y, size, keep, axis, f"crop_{'w' if axis == 3 else 'h'}")
    mode = "linear" if spec.interpolation == "bilinear" else "cubic"
    y = g.op("Resize", [x, "", "", size], f"{name}/resize", axes=[axis], mode=mode, antialias=1, cubic_coeff_a=-0.5,
             exclude_outside=1, coordinate_transformation_mode="half_pixel")
    y = y if keep is None else _crop(g, y, size, keep, axis, f"crop_{'w' if axis == 3 else 'h'}")
    return g.round8(y, name, clip=mode == "cubic")  # the triangle filter's weights are non-negative: its means stay in 0..255
