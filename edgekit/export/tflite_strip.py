"""Drop from a converted ``.tflite`` what the LiteRT interpreter never reads. Runs in the TF child process.

TFLiteConverter names every tensor after the TF ops fused into it
(``model/tf.nn.relu/Relu;model/tf.math.add/Add;model/tf.nn.convolution/convolution;Const_10``),
and may keep calibration ``min``/``max`` arrays beside the scales. The interpreter needs neither:
it addresses tensors by index, quantizes with ``scale``/``zero_point`` only.

=================================  ========  ===================================================
model description                  dropped   "MLIR Converted."; informational
names of intermediate tensors      dropped   the converter's fused-op names
quantization ``min``/``max``       dropped   calibration ranges; kernels read scale/zero point
repeated numeric vectors           shared    written once, every table points at that copy
empty buffers of activations       shared    buffer 0, the schema's sentinel for "no data"
identity RESHAPE ops               dropped   same shape, signature and quantization in and out
                                             (onnx2tf's Gemm leaves one after each dense layer)
names of subgraph I/O tensors      kept      ``get_input_details()`` and a bare .tflite's ports
signature defs                     kept      LiteRT (and the device agent) find I/O by them
metadata (min_runtime_version,     kept      read by the runtime and delegates
reduced_precision_support, ...)
buffers, scales, zero points       kept      same values: outputs cannot change
=================================  ========  ===================================================

Sharing matters for per-channel int8: the schema stores an int64 zero point per channel, for each
weight and its int32 bias, and the interpreter requires as many zero points as scales, so the
converter writes the same all-zero vector hundreds of times (about 240 kB, 1.7 % of the fp32 size,
on MobileNetV2). A FlatBuffer may point several tables at one vector, as it does for shared
strings; the verifier accepts it and the runtime only reads them. Weight buffers are not merged.

TensorFlow's own ``flatbuffer_utils.strip_strings`` also drops the signature defs and the I/O
names, which edgekit's backends rely on, so this keeps the same reader but not that step.
"""

from __future__ import annotations

import sys
from typing import Any

import flatbuffers  # the FlatBuffers runtime TensorFlow's schema code is generated for (tflite extra)
import numpy as np

__all__ = ["MAX_BYTES", "size_breakdown", "strip_tflite"]

#: past 2 GB TFLiteConverter writes buffers outside the flatbuffer, which the Python writer cannot reproduce
MAX_BYTES = 2**31 - 1


def strip_tflite(blob: bytes) -> tuple[bytes, dict[str, Any]]:
    """``blob`` without the strings and ranges the interpreter does not read, repeated vectors shared; and what was removed.

    Returns the original ``blob`` unchanged (``removed`` empty) for models the Python flatbuffer
    writer cannot rewrite (over 2 GB).
    """
    if len(blob) > MAX_BYTES:
        return blob, {"converter_bytes": len(blob), "bytes": len(blob), "removed": {}}
    from tensorflow.lite.tools import flatbuffer_utils

    # TF's maintained reader of the TFLite schema (object API); it byte-swaps on big-endian hosts
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(blob))
    removed = {"description": _drop_description(model), "tensor_names": _drop_inner_names(model),
               "min_max": _drop_min_max(model), "identity_reshapes": _drop_identity_reshapes(model)}
    removed["unused_tensors"] = _drop_unused_tensors(model)
    removed["empty_buffers"] = _share_empty_buffers(model)
    out, shared = _write(model, flatbuffer_utils)
    removed["shared_vector_bytes"] = shared
    return out, {"converter_bytes": len(blob), "bytes": len(out), "removed": removed}


def _write(model, flatbuffer_utils) -> tuple[bytes, int]:
    """``flatbuffer_utils.convert_object_to_bytearray`` with a builder that writes each numeric vector once."""
    if sys.byteorder == "big":
        flatbuffer_utils.byte_swap_tflite_model_obj(model, "big", "little")  # as flatbuffer_utils.write_model does
    builder = _SharingBuilder(1024)
    root = model.Pack(builder)
    builder.Finish(root, file_identifier=b"TFL3")
    return bytes(builder.Output()), builder.shared_bytes


class _SharingBuilder(flatbuffers.Builder):
    """A FlatBuffers builder that answers the offset of an identical vector already written instead of writing it again.

    Byte vectors (weight buffers, custom options) are always written: constant data stays one
    buffer per tensor, as the converter laid it out. Vectors keep their element type's alignment.
    """

    def __init__(self, initial_size: int) -> None:
        super().__init__(initial_size)
        self._written: dict[tuple[str, tuple[int, ...], bytes], int] = {}
        self.shared_bytes = 0

    def CreateNumpyVector(self, x: np.ndarray) -> int:  # noqa: N802 - the flatbuffers method it overrides
        if x.dtype.itemsize == 1:
            return super().CreateNumpyVector(x)
        key = (x.dtype.str, x.shape, x.tobytes())
        if key in self._written:
            self.shared_bytes += x.nbytes
            return self._written[key]
        self._written[key] = offset = super().CreateNumpyVector(x)
        return offset


def _drop_description(model) -> int:
    n = len(model.description or b"")
    model.description = None
    return n


def _drop_inner_names(model) -> int:
    """Clear every tensor name except a subgraph's inputs' and outputs' (and any a signature points at)."""
    signed = _signed(model)
    count = 0
    for g, subgraph in enumerate(model.subgraphs or []):
        keep = {*_indices(subgraph.inputs), *_indices(subgraph.outputs), *(i for sg, i in signed if sg == g)}
        for i, tensor in enumerate(subgraph.tensors or []):
            if i not in keep and tensor.name:
                tensor.name = None
                count += 1
    return count


def _drop_identity_reshapes(model) -> int:
    """Remove RESHAPE ops that give back their input unchanged, for any batch size; returns how many.

    Identity means: same element type, shape, shape signature and quantization in and out, and a
    target shape equal to that signature (a -1 batch stays -1). Consumers then read the input
    directly. A reshape whose output is a subgraph output stays (the output's name is the port).
    """
    from tensorflow.lite.python import schema_py_generated as schema

    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes or []]
    count = 0
    for subgraph in model.subgraphs or []:
        tensors = subgraph.tensors or []
        ports = {*_indices(subgraph.inputs), *_indices(subgraph.outputs)}
        keep_ops = []
        for op in subgraph.operators or []:
            ins, outs = _indices(op.inputs), _indices(op.outputs)
            if (codes[op.opcodeIndex] == schema.BuiltinOperator.RESHAPE and len(outs) == 1 and ins and outs[0] not in ports
                    and _identity_reshape(model, tensors, ins, outs[0])):
                src, dst = ins[0], outs[0]
                for other in subgraph.operators:
                    if other.inputs is not None:
                        other.inputs = np.asarray([src if int(i) == dst else int(i) for i in other.inputs], dtype=np.int32)
                count += 1
                continue
            keep_ops.append(op)
        subgraph.operators = keep_ops
    return count


def _identity_reshape(model, tensors, ins: list[int], out: int) -> bool:
    a, b = tensors[ins[0]], tensors[out]
    if a.type != b.type or not _same(a.shape, b.shape) or not _same(_signature(a), _signature(b)) or not _same_quant(a, b):
        return False
    if len(ins) < 2 or ins[1] < 0:
        return True  # the target shape is the output's, already equal
    data = model.buffers[tensors[ins[1]].buffer].data
    if data is None or not len(data):
        return False  # a shape computed at run time
    from tensorflow.lite.python import schema_py_generated as schema

    target = np.frombuffer(bytes(data), dtype=np.int64 if tensors[ins[1]].type == schema.TensorType.INT64 else np.int32)
    return _same(target, _signature(a))


def _signature(t) -> list[int]:
    return [int(d) for d in (t.shapeSignature if t.shapeSignature is not None else t.shape if t.shape is not None else [])]


def _same(x, y) -> bool:
    return [int(v) for v in (x if x is not None else [])] == [int(v) for v in (y if y is not None else [])]


def _same_quant(a, b) -> bool:
    return _quant_key(a.quantization) == _quant_key(b.quantization)


def _quant_key(q) -> tuple | None:
    if q is None:
        return None
    return (*(None if v is None else np.asarray(v).tobytes() for v in (q.scale, q.zeroPoint)), q.quantizedDimension)


def _drop_unused_tensors(model) -> int:
    """Remove tensors no op, subgraph port or signature refers to, renumbering the references; returns how many."""
    signed = _signed(model)
    dropped = 0
    for g, subgraph in enumerate(model.subgraphs or []):
        tensors = subgraph.tensors or []
        used = {*_indices(subgraph.inputs), *_indices(subgraph.outputs), *(i for sg, i in signed if sg == g)}
        for op in subgraph.operators or []:
            used |= {*_indices(op.inputs), *_indices(op.outputs), *_indices(op.intermediates)}
        used.discard(-1)  # an omitted optional input
        if len(used) == len(tensors):
            continue
        order = sorted(used)
        new = {old: i for i, old in enumerate(order)} | {-1: -1}
        subgraph.tensors = [tensors[i] for i in order]

        subgraph.inputs, subgraph.outputs = _remap(subgraph.inputs, new), _remap(subgraph.outputs, new)
        for op in subgraph.operators or []:
            op.inputs, op.outputs, op.intermediates = _remap(op.inputs, new), _remap(op.outputs, new), _remap(op.intermediates, new)
        for sig in model.signatureDefs or []:
            if sig.subgraphIndex == g:
                for t in (sig.inputs or []) + (sig.outputs or []):
                    t.tensorIndex = new[t.tensorIndex]
        dropped += len(tensors) - len(order)
    return dropped


def _remap(xs, new: dict[int, int]):
    return None if xs is None else np.asarray([new[int(i)] for i in xs], dtype=np.int32)


def _share_empty_buffers(model) -> int:
    """Point every tensor without constant data at buffer 0, drop the buffers nothing reads; returns how many.

    The converter gives each activation tensor a buffer of its own, empty. The schema reserves
    buffer 0 as the empty sentinel "so that tensors without a buffer can provide 0 as their buffer";
    the interpreter reads a tensor as constant only when its buffer holds data.
    """
    buffers = model.buffers or []
    if not buffers or not _empty(buffers[0]):
        return 0  # not a file this rewrite understands: leave it as written
    refs = [t for sg in model.subgraphs or [] for t in sg.tensors or []]
    for t in refs:
        if _empty(buffers[t.buffer]):
            t.buffer = 0
    used = {0, *(t.buffer for t in refs), *(m.buffer for m in model.metadata or []), *(int(i) for i in model.metadataBuffer or [])}
    keep = [i for i in range(len(buffers)) if i in used]  # constant data no tensor reads any more goes too
    new_index = {old: new for new, old in enumerate(keep)}
    model.buffers = [buffers[i] for i in keep]
    for t in refs:
        t.buffer = new_index[t.buffer]
    for m in model.metadata or []:
        m.buffer = new_index[m.buffer]
    if model.metadataBuffer is not None:
        model.metadataBuffer = [new_index[int(i)] for i in model.metadataBuffer]
    return len(buffers) - len(keep)


def _empty(buffer) -> bool:
    """No data in the flatbuffer and none outside it (``offset``/``size`` address data appended after a 2 GB model)."""
    return (buffer.data is None or len(buffer.data) == 0) and not getattr(buffer, "offset", 0)


def _drop_min_max(model) -> int:
    count = 0
    for subgraph in model.subgraphs or []:
        for tensor in subgraph.tensors or []:
            q = tensor.quantization
            if q is not None and (q.min is not None or q.max is not None):
                q.min = q.max = None
                count += 1
    return count


def _signed(model) -> set[tuple[int, int]]:
    """(subgraph, tensor) of every tensor a signature def names."""
    return {(sig.subgraphIndex, t.tensorIndex) for sig in model.signatureDefs or [] for t in (sig.inputs or []) + (sig.outputs or [])}


def _indices(xs) -> list[int]:
    return [] if xs is None else [int(i) for i in xs]


def size_breakdown(blob: bytes) -> dict[str, int]:
    """Where a .tflite's bytes go: constant data by element type, quantization parameters, and the rest (the graph).

    ``quant_entries`` counts (scale, zero point) pairs: one per tensor, or one per channel for
    per-channel weights and their int32 biases. The schema stores each as float32 + int64 and the
    interpreter requires both arrays, of equal length. ``quant_bytes`` is what the file holds for them
    (a vector shared by several tensors counted once).
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(blob))
    type_names = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    sizes = [0 if b.data is None else len(b.data) for b in model.buffers]
    out: dict[str, int] = {"total": len(blob), "quant_entries": 0, "names": 0}
    counted: set[int] = set()
    quant_vectors: set[tuple[str, bytes]] = set()
    for subgraph in model.subgraphs or []:
        for t in subgraph.tensors or []:
            out["names"] += len(t.name or b"")
            if sizes[t.buffer] and t.buffer not in counted:
                counted.add(t.buffer)
                key = f"const_{type_names.get(t.type, t.type)}"
                out[key] = out.get(key, 0) + sizes[t.buffer]
            q = t.quantization
            if q is None:
                continue
            out["quant_entries"] += 0 if q.scale is None else len(q.scale)
            quant_vectors |= {(str(np.asarray(v).dtype), np.asarray(v).tobytes()) for v in (q.scale, q.zeroPoint, q.min, q.max) if v is not None}
    out["quant_bytes"] = sum(len(b) for _, b in quant_vectors)
    out["other_buffers"] = sum(sizes) - sum(sizes[i] for i in counted)  # metadata and the like
    out["graph"] = len(blob) - sum(sizes) - out["quant_bytes"]  # tables, shapes, ops, signature: the flatbuffer itself
    return out
