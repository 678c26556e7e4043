"""Drop from a converted ``.tflite`` what the LiteRT interpreter never reads. Runs in the TF child process.

TFLiteConverter names every tensor after the TF ops fused into it
(``model/tf.nn.relu/Relu;model/tf.math.add/Add;model/tf.nn.convolution/convolution;Const_10``),
and may keep calibration ``min``/``max`` arrays beside the scales. The interpreter needs neither:
it addresses tensors by index, quantizes with ``scale``/``zero_point`` only.

=================================  ========  ===================================================
model description                  dropped   "MLIR Converted."; informational
names of intermediate tensors      dropped   most of the removable bytes (fused-op names)
quantization ``min``/``max``       dropped   calibration ranges; kernels read scale/zero point
names of subgraph I/O tensors      kept      ``get_input_details()`` and a bare .tflite's ports
signature defs                     kept      LiteRT (and the device agent) find I/O by them
metadata (min_runtime_version,     kept      read by the runtime and delegates
reduced_precision_support, ...)
buffers, scales, zero points       kept      byte for byte: outputs cannot change
=================================  ========  ===================================================

TensorFlow's own ``flatbuffer_utils.strip_strings`` also drops the signature defs and the I/O
names, which edgekit's backends rely on, so this keeps the same read/write path but not that step.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MAX_BYTES", "size_breakdown", "strip_tflite"]

#: past 2 GB TFLiteConverter writes buffers outside the flatbuffer, which the Python writer cannot reproduce
MAX_BYTES = 2**31 - 1


def strip_tflite(blob: bytes) -> tuple[bytes, dict[str, Any]]:
    """``blob`` without the strings and ranges the interpreter does not read, and what was removed.

    Returns the original ``blob`` unchanged (``removed`` empty) for models the Python flatbuffer
    writer cannot rewrite (over 2 GB).
    """
    if len(blob) > MAX_BYTES:
        return blob, {"converter_bytes": len(blob), "bytes": len(blob), "removed": {}}
    from tensorflow.lite.tools import flatbuffer_utils

    # the maintained reader/writer of the TFLite schema; it keeps the converter's buffer alignment
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(blob))
    removed = {"description": _drop_description(model), "tensor_names": _drop_inner_names(model),
               "min_max": _drop_min_max(model)}
    out = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    return out, {"converter_bytes": len(blob), "bytes": len(out), "removed": removed}


def _drop_description(model) -> int:
    n = len(model.description or b"")
    model.description = None
    return n


def _drop_inner_names(model) -> int:
    """Clear every tensor name except a subgraph's inputs' and outputs' (and any a signature points at)."""
    signed = {(sig.subgraphIndex, t.tensorIndex) for sig in model.signatureDefs or [] for t in (sig.inputs or []) + (sig.outputs or [])}
    count = 0
    for g, subgraph in enumerate(model.subgraphs or []):
        keep = {*_indices(subgraph.inputs), *_indices(subgraph.outputs), *(i for sg, i in signed if sg == g)}
        for i, tensor in enumerate(subgraph.tensors or []):
            if i not in keep and tensor.name:
                tensor.name = None
                count += 1
    return count


def _drop_min_max(model) -> int:
    count = 0
    for subgraph in model.subgraphs or []:
        for tensor in subgraph.tensors or []:
            q = tensor.quantization
            if q is not None and (q.min is not None or q.max is not None):
                q.min = q.max = None
                count += 1
    return count


def _indices(xs) -> list[int]:
    return [] if xs is None else [int(i) for i in xs]


def size_breakdown(blob: bytes) -> dict[str, int]:
    """Where a .tflite's bytes go: constant data by element type, quantization parameters, and the rest (the graph).

    ``quant_entries`` counts (scale, zero point) pairs: one per tensor, or one per channel for
    per-channel weights and their int32 biases. The schema stores each as float32 + int64 and the
    interpreter requires both arrays (of equal length), so 12 bytes an entry are the format's own cost.
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(blob))
    type_names = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    sizes = [0 if b.data is None else len(b.data) for b in model.buffers]
    out: dict[str, int] = {"total": len(blob), "quant_entries": 0, "quant_bytes": 0, "names": 0}
    counted: set[int] = set()
    for subgraph in model.subgraphs or []:
        for t in subgraph.tensors or []:
            out["names"] += len(t.name or b"")
            if sizes[t.buffer] and t.buffer not in counted:
                counted.add(t.buffer)
                key = f"const_{type_names.get(t.type, t.type)}"
                out[key] = out.get(key, 0) + sizes[t.buffer]
            q = t.quantization
            n = 0 if q is None or q.scale is None else len(q.scale)
            out["quant_entries"] += n
            out["quant_bytes"] += 4 * n + 8 * (0 if q is None or q.zeroPoint is None else len(q.zeroPoint))
            out["quant_bytes"] += 4 * sum(0 if v is None else len(v) for v in ((q.min, q.max) if q is not None else ()))
    data = sum(sizes[i] for i in counted)
    out["other_buffers"] = sum(sizes) - data  # metadata and the like
    out["graph"] = len(blob) - sum(sizes) - out["quant_bytes"]  # tables, shapes, ops, names, signature: the flatbuffer itself
    return out
