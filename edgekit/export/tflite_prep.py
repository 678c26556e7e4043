"""ONNX rewrites that make onnx2tf's TensorFlow graph quantize well. Each returns a new model and a count.

``explicit_maxpool_padding``: onnx2tf pads a MaxPool that has ``pads`` with the dtype's minimum
(-3.4e38) in a separate PadV2. TFLite's int8 calibrator then sees -3.4e38 in that tensor's range,
and because PadV2 shares its input's quantization, the producing conv gets a scale of ~1e36: the
int8 model computes garbage (and XNNPACK refuses it). We pad in ONNX instead, with a value that
never changes a max: 0 when the input cannot be negative (after Relu, Clip(min >= 0), Sigmoid, ...),
else the edge values (always inside the window, since ONNX requires pads < kernel). Both are exact.

``hard_sigmoid_as_relu6``: onnx2tf turns ``HardSigmoid`` (MobileNetV3's squeeze-excitation gate) into
min(max(ax + b, 0), 1), which TFLiteConverter fuses into RELU_0_TO_1, an op XNNPACK does not run (in
float or int8): every SE block then splits the XNNPACK graph in two. ``Clip(6a x + 6b, 0, 6) / 6`` is the
same function; onnx2tf makes it an ADD with a fused RELU6 and a MUL, which XNNPACK runs in int8.

``HardSwish`` needs no ONNX rewrite: onnx2tf's own ``replace_to_pseudo_operators=["hardswish"]`` writes
x * relu6(x + 3) * 0.16666666, which TFLiteConverter does not fuse back into HARD_SWISH (an int8 op
XNNPACK lacks: TFLite's reference kernel took 3.4 ms of MobileNetV3-small's 5.8 ms int8 run here, the
float model takes 2.6 ms); ADD, MUL and RELU6 all run on XNNPACK in int8. :func:`count_ops` tells the
exporter to ask for it.

The int8 .tflite also gets :func:`edgekit.onnx_rewrites.space_to_depth_stem` (as every static int8
ONNX candidate does).
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgekit.onnx_rewrites import unique_name as _unique

__all__ = ["count_ops", "explicit_maxpool_padding", "hard_sigmoid_as_relu6"]

#: ops whose output is never negative
_NON_NEGATIVE = {"Relu", "Sigmoid", "Softmax", "Abs", "Exp", "Softplus", "HardSigmoid"}


def explicit_maxpool_padding(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Replace ``MaxPool(pads=p)`` with ``Pad(p) → MaxPool(pads=0)``, padding with 0 or edge values."""
    if not any(o.domain in ("", "ai.onnx") and o.version >= 11 for o in model.opset_import):
        return model, 0  # Pad takes its pads as an input from opset 11; leave older models as they are
    out = copy.deepcopy(model)
    g = out.graph
    producers = {o: n for n in g.node for o in n.output}
    inits = {t.name: t for t in g.initializer}
    nodes, count = [], 0
    for node in g.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        pads = list(attrs.get("pads") or [])
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        if node.op_type != "MaxPool" or node.domain not in ("", "ai.onnx") or not any(pads) or auto_pad not in ("NOTSET", ""):
            nodes.append(node)
            continue
        spatial = len(pads) // 2
        onnx_pads = [0, 0] + pads[:spatial] + [0, 0] + pads[spatial:]
        pads_name = _unique(f"{node.name or node.output[0]}_pads", g)
        g.initializer.append(numpy_helper.from_array(np.array(onnx_pads, dtype=np.int64), pads_name))
        padded = _unique(f"{node.output[0]}_padded", g)
        zero = _non_negative(node.input[0], producers, inits)
        pad = helper.make_node("Pad", [node.input[0], pads_name], [padded], name=_unique(f"{node.name or 'maxpool'}_pad", g),
                               mode="constant" if zero else "edge")
        pool = copy.deepcopy(node)
        pool.input[0] = padded
        del pool.attribute[:]
        pool.attribute.extend(helper.make_attribute(k, v) for k, v in attrs.items() if k not in ("pads", "auto_pad"))
        nodes += [pad, pool]
        count += 1
    if count:
        del g.node[:]
        g.node.extend(nodes)
    return out, count


#: 1/6 one float32 step below float32(1/6): TFLiteConverter fuses x * relu6(x + 3) * float32(1/6) into HARD_SWISH,
#: the op this rewrite avoids (onnx2tf's pseudo HardSwish uses the same constant for the same reason)
ONE_SIXTH = 0.16666666


def hard_sigmoid_as_relu6(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Replace ``HardSigmoid(a, b)`` with ``Mul(6a) → Add(6b) → Clip(0, 6) → Mul(1/6)``: the same values to float rounding."""
    if not any(o.domain in ("", "ai.onnx") and o.version >= 11 for o in model.opset_import):
        return model, 0  # Clip takes min/max as inputs from opset 11
    if not any(n.op_type == "HardSigmoid" and n.domain in ("", "ai.onnx") for n in model.graph.node):
        return model, 0
    out = copy.deepcopy(model)
    g = out.graph
    nodes, count = [], 0
    for node in g.node:
        if node.op_type != "HardSigmoid" or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        alpha, beta = float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))
        base = node.name or node.output[0]
        consts = {}
        for key, value in (("scale", 6 * alpha), ("shift", 6 * beta), ("zero", 0.0), ("six", 6.0), ("sixth", ONE_SIXTH)):
            consts[key] = _unique(f"{base}_{key}", g)
            g.initializer.append(numpy_helper.from_array(np.array(value, dtype=np.float32), consts[key]))
        t = [_unique(f"{node.output[0]}_{k}", g) for k in ("scaled", "shifted", "clipped")]
        nodes += [helper.make_node("Mul", [node.input[0], consts["scale"]], [t[0]], name=_unique(f"{base}_mul", g)),
                  helper.make_node("Add", [t[0], consts["shift"]], [t[1]], name=_unique(f"{base}_add", g)),
                  helper.make_node("Clip", [t[1], consts["zero"], consts["six"]], [t[2]], name=_unique(f"{base}_relu6", g)),
                  helper.make_node("Mul", [t[2], consts["sixth"]], list(node.output), name=node.name)]
        count += 1
    del g.node[:]
    g.node.extend(nodes)
    return out, count


def count_ops(model: onnx.ModelProto, op_type: str) -> int:
    """How many nodes of the default domain have ``op_type`` (main graph)."""
    return sum(1 for n in model.graph.node if n.op_type == op_type and n.domain in ("", "ai.onnx"))


def _non_negative(name: str, producers: dict, inits: dict) -> bool:
    node = producers.get(name)
    if node is None:
        return False
    if node.op_type in _NON_NEGATIVE:
        return True
    if node.op_type == "Clip":
        low = node.input[1] if len(node.input) > 1 and node.input[1] else None
        if low is None:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            return attrs.get("min") is not None and float(attrs["min"]) >= 0
        return low in inits and float(numpy_helper.to_array(inits[low]).min()) >= 0
    return False
