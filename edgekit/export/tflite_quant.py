"""Full-integer int8 for a ``.tflite``, calibrated once and quantized as often as needed. Runs in the TF worker process.

``TFLiteConverter`` calibrates the float model on the representative data and then quantizes it
with TensorFlow's MLIR quantizer; its quantization debugger
(``tf.lite.experimental.QuantizationDebugger``) splits the two, so one calibration serves any number
of variants: its ``get_nondebug_quantized_model()`` is ``mlir_quantize(calibrated, ...)`` with the
debug options' deny-lists (``denylisted_ops``: TFLite op types, ``denylisted_nodes``: output tensor
names of single ops), which keep those ops float with a dequantize before and a quantize after. We
call that function directly (the debugger would first build and load an instrumented model per
variant, which only its statistics need) and use the debugger itself for per-layer error statistics
(:func:`layer_errors`). A variant costs about a second instead of a calibration; with no deny-list
the result is what ``TFLiteConverter.convert()`` writes (same quantizer, same options).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit.export.tflite_keras import first_line, strip_ansi
from edgekit.tf_process import WorkerError

__all__ = ["Node", "calibrate", "float_compute_ops", "layer_errors", "nodes", "quantize"]

#: ops that move or reinterpret data: never worth keeping float on their own
DATA_MOVEMENT = frozenset({"QUANTIZE", "DEQUANTIZE", "RESHAPE", "SQUEEZE", "EXPAND_DIMS", "TRANSPOSE", "CONCATENATION", "PAD", "PADV2",
                           "SPACE_TO_DEPTH", "DEPTH_TO_SPACE", "SLICE", "STRIDED_SLICE", "GATHER", "SPLIT", "SPLIT_V", "PACK", "UNPACK"})


@dataclass(frozen=True)
class Node:
    """One op of a .tflite: its position, TFLite op type and first output tensor's name (what ``denylisted_nodes`` takes)."""

    index: int
    op: str
    name: str
    float_out: bool = False  # its first output is float32 (in a quantized model: the op runs in float)


def calibrate(tf: Any, saved: str, gen: Callable[[], Iterator[dict[str, np.ndarray]]]) -> bytes:
    """The float model with calibration ranges on every tensor (``_experimental_calibrate_only``, as the debugger does)."""
    c = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=["serving_default"])
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    c.representative_dataset = gen
    c._experimental_calibrate_only = True  # noqa: SLF001 - the debugger's own switch: calibrate, do not quantize
    try:
        return bytes(c.convert())
    except Exception as e:  # noqa: BLE001 - ConverterError and friends
        raise WorkerError("converter", f"TFLiteConverter failed calibrating the model: {first_line(e)}") from None


def quantize(tf: Any, calibrated: bytes, *, per_channel: bool, int8_io: bool, deny_ops: tuple[str, ...] = (),
             deny_nodes: tuple[str, ...] = ()) -> bytes:
    """The calibrated model quantized to int8, keeping ``deny_ops`` (types) and ``deny_nodes`` (output names) float."""
    from tensorflow.lite.python import convert as tfl_convert
    from tensorflow.lite.python.lite import _deduplicate_readonly_buffers

    io_type = tf.int8 if int8_io else tf.float32
    try:
        blob = tfl_convert.mlir_quantize(calibrated, disable_per_channel=not per_channel, input_data_type=io_type, output_data_type=io_type,
                                         denylisted_ops=list(deny_ops) or None, denylisted_nodes=list(deny_nodes) or None)
        # as TFLiteConverter.convert() finishes: identical constant buffers stored once
        return bytes(_deduplicate_readonly_buffers(blob))
    except Exception as e:  # noqa: BLE001
        raise WorkerError("quantization", f"TFLite's quantizer failed: {strip_ansi(first_line(e))}") from None


def nodes(blob: bytes) -> list[Node]:
    """Every op of the main subgraph, in execution order."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=blob)
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    out = []
    for op in it._get_ops_details():  # noqa: SLF001 - the interpreter's only op listing
        outs = [int(i) for i in op["outputs"] if int(i) >= 0]
        first = tensors.get(outs[0]) if outs else None
        out.append(Node(int(op["index"]), str(op["op_name"]), str(first["name"]) if first else "",
                        bool(first is not None and np.dtype(first["dtype"]) == np.float32)))
    return out


def float_compute_ops(quantized: list[Node]) -> list[Node]:
    """Ops of a quantized model that compute in float (deny-listed, or with no int8 kernel)."""
    return [n for n in quantized if n.float_out and n.op not in DATA_MOVEMENT]


def layer_errors(tf: Any, calibrated: bytes, samples: list[list[np.ndarray]], *, per_channel: bool,
                 deny_nodes: tuple[str, ...] = ()) -> dict[str, float]:
    """Per quantized op, the error int8 adds on its own: RMS difference from the float op on the same inputs, in output steps.

    The quantization debugger's NumericVerify statistics (``rmse/scale`` in TensorFlow's guide): about
    0.29 for an op whose only error is rounding its output, far more for one int8 represents badly.
    ``samples`` are input lists in the model's input order.
    """
    from tensorflow.lite.python import convert as tfl_convert

    debug_model = tfl_convert.mlir_quantize(calibrated, disable_per_channel=not per_channel, enable_numeric_verify=True,
                                            denylisted_nodes=list(deny_nodes) or None)
    debugger = tf.lite.experimental.QuantizationDebugger(quant_debug_model_content=debug_model, debug_dataset=lambda: iter(samples))
    debugger.run()
    buf = io.StringIO()
    debugger.layer_statistics_dump(buf)
    out = {}
    for row in csv.DictReader(io.StringIO(buf.getvalue())):
        scale = float(row["scale"] or 0)
        if scale > 0:
            out[row["tensor_name"]] = float(np.sqrt(float(row["mean_squared_error"]))) / scale
    return out
