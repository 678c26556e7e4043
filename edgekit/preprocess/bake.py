"""Bake the preprocessing into a model: raw uint8 RGB images in, the network's outputs out.

The raw input keeps the network input's name (requests address the model as before; only what
they send changes: uint8 [N, H, W, 3] RGB, the way a JPEG or a camera frame decodes). The spec is
recorded in the model's metadata (``edgekit.preprocess``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import onnx
from onnx import TensorProto, helper

from device_agent.contract.manifest import TensorSpec
from edgekit.errors import InputError
from edgekit.preprocess.graph import PREFIX, build
from edgekit.preprocess.spec import ImageSpec

__all__ = ["METADATA_KEY", "Baked", "bake", "image_input"]

METADATA_KEY = "edgekit.preprocess"
#: Resize's antialias attribute (the any-size graph) needs opset 18; the fixed-size graph's ops need 13
_OPSET_ANY_SIZE = 18
_OPSET_FIXED = 13


@dataclass(frozen=True)
class Baked:
    """A model with its preprocessing in front: the new model, the completed spec, the raw and the network's inputs."""

    model: onnx.ModelProto
    spec: ImageSpec
    raw_input: TensorSpec
    model_input: TensorSpec
    preprocess: onnx.ModelProto  # the preprocessing alone (raw in, the network's input out): its parity is measured

    def record(self) -> dict[str, Any]:
        """The manifest's ``preprocessing`` section (see ``device_agent.contract.manifest``)."""
        return {
            "kind": "image",
            "raw_input": self.raw_input.to_dict(),
            "model_input": self.model_input.to_dict(),
            "spec": self.spec.to_dict(),
            "any_size": self.spec.raw_size is None,
            "node_prefix": PREFIX,
        }


def image_input(inputs: tuple[TensorSpec, ...], spec: ImageSpec) -> tuple[TensorSpec, tuple[int, int], str, int]:
    """The model's one image input, its (H, W), layout and channel count; InputError when it has no such input."""
    if len(inputs) != 1 or len(inputs[0].shape) != 4 or not inputs[0].dtype.startswith("float"):
        shown = ", ".join(f"{s.name} {s.dtype} {list(s.shape)}" for s in inputs)
        raise InputError(f"image preprocessing feeds a model with one 4-D float image input; this model's inputs are {shown}")
    s = inputs[0]
    layout = spec.layout or ("NHWC" if isinstance(s.shape[3], int) and s.shape[3] in (1, 3) and s.shape[1] not in (1, 3) else "NCHW")
    c_axis, hw = (1, (2, 3)) if layout == "NCHW" else (3, (1, 2))
    size = spec.size or (s.shape[hw[0]], s.shape[hw[1]])
    if not all(isinstance(d, int) for d in size):
        raise InputError(f"input {s.name!r} has symbolic height/width {list(s.shape)}; give the image size in the preprocessing spec (size: [H, W])")
    channels = s.shape[c_axis] if isinstance(s.shape[c_axis], int) else (1 if spec.channels == "gray" else 3)
    return s, (int(size[0]), int(size[1])), layout, int(channels)


def bake(model: onnx.ModelProto, spec: ImageSpec, inputs: tuple[TensorSpec, ...]) -> Baked:
    """``model`` (not modified) with ``spec``'s preprocessing as ONNX ops in front of its image input."""
    s, size, layout, channels = image_input(inputs, spec)
    full = spec.for_model(size, layout, channels)
    out = _with_opset(model, _OPSET_FIXED if full.raw_size is not None else _OPSET_ANY_SIZE)
    internal = f"{PREFIX}{s.name}"
    for node in out.graph.node:  # the network now reads the preprocessed tensor
        for i, name in enumerate(node.input):
            if name == s.name:
                node.input[i] = internal
    pre = build(full, s.name, internal, full.raw_size)
    old_nodes = list(out.graph.node)
    del out.graph.node[:]
    out.graph.node.extend(pre.nodes + old_nodes)
    out.graph.initializer.extend(pre.inits)
    batch = s.shape[0] if s.shape and s.shape[0] is not None else "N"
    h, w = full.raw_size or ("height", "width")
    raw = helper.make_tensor_value_info(s.name, TensorProto.UINT8, [batch, h, w, 3])
    graph_inputs = [raw if vi.name == s.name else vi for vi in out.graph.input]
    del out.graph.input[:]
    out.graph.input.extend(graph_inputs)
    entry = out.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(full.to_dict())
    try:
        onnx.checker.check_model(out)
    except onnx.checker.ValidationError as e:
        raise InputError(f"the preprocessing could not be put in front of {s.name!r}: {str(e).splitlines()[0]}") from None
    raw_spec = TensorSpec(s.name, "uint8", (batch, h, w, 3), "NHWC")
    alone = helper.make_model(helper.make_graph(pre.nodes, "edgekit_preprocess", [raw], [helper.make_tensor_value_info(
        internal, TensorProto.FLOAT, None)], initializer=pre.inits), opset_imports=[helper.make_opsetid("", max(18, _opset(out)))])
    alone.ir_version = out.ir_version
    return Baked(out, full, raw_spec, TensorSpec(s.name, s.dtype, s.shape, layout), alone)


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _with_opset(model: onnx.ModelProto, at_least: int) -> onnx.ModelProto:
    """A copy of ``model`` at opset ≥ ``at_least`` (onnx's version converter); InputError naming the fix when it cannot."""
    current = _opset(model)
    if current >= at_least:
        out = onnx.ModelProto()
        out.CopyFrom(model)
        return out
    try:
        return onnx.version_converter.convert_version(model, at_least)
    except Exception as e:  # noqa: BLE001 - the converter raises several types
        raise InputError(f"the baked preprocessing needs opset {at_least}, and this opset-{current} model does not convert "
                         f"({str(e).splitlines()[0][:200]}); re-export it at opset {at_least}, or set bake: false") from None
