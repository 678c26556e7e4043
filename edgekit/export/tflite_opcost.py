"""What each op of a ``.tflite`` costs in float and in int8 under LiteRT, one op at a time. Runs in the TF worker process.

LiteRT's op profiler is not reachable from Python (the ``Interpreter`` has no profiler hook; the
``benchmark_model`` tool is a separate C++ binary), so every op is cut out into a model of its own
(its tensors and constant buffers only) and timed where users run it: ``Interpreter(num_threads=1)``
with the default XNNPACK delegate, warm, the median of consecutive calls on this thread's CPU clock
(so other processes on a shared CPU do not count). The float cost comes from the calibrated model,
the int8 cost from the whole-model int8 conversion: both keep the converter's tensor names, which
pair them. Each cut model also says whether XNNPACK takes the op: int8 HARD_SWISH, DIV, SQRT, ABS,
AVERAGE_POOL_2D, ... fall back to TFLite's reference kernels in LiteRT 2.x while their float forms run
on XNNPACK, which is what makes a whole-model int8 conversion slower than float.

A lone op misses what the whole model has (fusions, cache reuse, the quantize/dequantize a float op
needs between int8 neighbours), so these numbers propose candidates and explain the choice;
the choice itself is made by timing whole variants (:mod:`edgekit.export.tflite_search`).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["OpCost", "op_costs", "summarize"]

WARMUP = 2
RUNS = 10


@dataclass
class OpCost:
    """One op: its type, name, the microseconds it takes in float and in int8, and whether XNNPACK runs each."""

    op: str
    name: str
    float_us: float | None
    int8_us: float | None
    float_xnnpack: bool | None
    int8_xnnpack: bool | None

    @property
    def slower_in_int8(self) -> bool:
        """int8 takes over 10 % (and 2 µs) longer than float, or leaves XNNPACK where float stays on it."""
        if self.float_us is None or self.int8_us is None:
            return False
        if self.float_xnnpack and self.int8_xnnpack is False:
            return True
        return self.int8_us > self.float_us * 1.1 + 2.0


def op_costs(float_blob: bytes, int8_blob: bytes, *, budget_s: float = 60.0) -> list[OpCost]:
    """Per op of the int8 model (quantize/dequantize included), its cost there and its float twin's, paired by output name."""
    from tensorflow.lite.tools import flatbuffer_utils

    floats = _per_op(flatbuffer_utils, float_blob, time.perf_counter() + budget_s / 2)
    out = []
    for name, (op, us, xnn) in _per_op(flatbuffer_utils, int8_blob, time.perf_counter() + budget_s / 2).items():
        f = floats.get(name)
        f = f if f and f[0] == op else None  # quantize/dequantize at the I/O take the names of float ops
        out.append(OpCost(op, name, f[1] if f else None, us, f[2] if f else None, xnn))
    return out


def summarize(costs: list[OpCost]) -> dict[str, dict[str, Any]]:
    """Per op type: how many, total µs in float and in int8, how many are slower in int8 and how many leave XNNPACK."""
    out: dict[str, dict[str, Any]] = {}
    for c in costs:
        s = out.setdefault(c.op, {"count": 0, "float_us": 0.0, "int8_us": 0.0, "slower_in_int8": 0, "int8_off_xnnpack": 0})
        s["count"] += 1
        s["float_us"] += c.float_us or 0.0
        s["int8_us"] += c.int8_us or 0.0
        s["slower_in_int8"] += int(c.slower_in_int8)
        s["int8_off_xnnpack"] += int(c.int8_xnnpack is False)
    for s in out.values():
        s["float_us"], s["int8_us"] = round(s["float_us"], 1), round(s["int8_us"], 1)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["int8_us"]))


def _per_op(flatbuffer_utils: Any, blob: bytes, deadline: float) -> dict[str, tuple[str, float | None, bool | None]]:
    """{first output name: (op type, µs or None past the deadline, on XNNPACK)} for every op of ``blob``'s main subgraph."""
    from tensorflow.lite.python import schema_py_generated as schema

    codes = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(blob))
    sg = model.subgraphs[0]
    out = {}
    for i, op in enumerate(sg.operators):
        oc = model.operatorCodes[op.opcodeIndex]
        kind = codes.get(max(oc.builtinCode, oc.deprecatedBuiltinCode), "CUSTOM")
        name = sg.tensors[op.outputs[0]].name.decode() if len(op.outputs) else f"#{i}"
        us, xnn = None, None
        if time.perf_counter() < deadline:
            try:
                us, xnn = _time_alone(flatbuffer_utils.convert_object_to_bytearray(_cut(model, i)))
            except (RuntimeError, ValueError):  # an op that cannot run alone (state, a subgraph): no number
                pass
        out[name] = (kind, us, xnn)
    return out


def _cut(model: Any, i: int) -> Any:
    """A model of op ``i`` alone: its tensors (renumbered), its constant buffers, the same operator codes."""
    sg = model.subgraphs[0]
    op = copy.copy(sg.operators[i])
    used = [t for t in dict.fromkeys([*op.inputs, *op.outputs, *(op.intermediates if op.intermediates is not None else [])]) if t >= 0]
    index = {t: k for k, t in enumerate(used)}
    buffers = [copy.copy(model.buffers[0])]
    tensors = []
    for t in used:
        tensor = copy.copy(sg.tensors[t])
        data = model.buffers[tensor.buffer].data if tensor.buffer < len(model.buffers) else None
        if tensor.buffer and data is not None and len(data):
            buffers.append(model.buffers[tensor.buffer])
            tensor.buffer = len(buffers) - 1
        else:
            tensor.buffer = 0
        tensors.append(tensor)
    op.inputs = [index[t] if t >= 0 else -1 for t in op.inputs]
    op.outputs = [index[t] for t in op.outputs]
    if op.intermediates is not None:
        op.intermediates = [index[t] for t in op.intermediates if t >= 0]
    new_sg = copy.copy(sg)
    new_sg.tensors, new_sg.operators = tensors, [op]
    new_sg.inputs = [index[t] for t in sg.operators[i].inputs if t >= 0 and tensors[index[t]].buffer == 0]
    new_sg.outputs = list(op.outputs)
    m = copy.copy(model)
    m.subgraphs, m.buffers, m.signatureDefs, m.metadata, m.metadataBuffer = [new_sg], buffers, [], [], []
    return m


def _time_alone(blob: bytes | bytearray) -> tuple[float, bool]:
    """Median µs of one op's model (thread CPU time, warm) and whether XNNPACK took it."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=bytes(blob), num_threads=1)
    it.allocate_tensors()
    rng = np.random.default_rng(0)
    for d in it.get_input_details():
        dtype = np.dtype(d["dtype"])
        x = rng.standard_normal(d["shape"]) if dtype.kind == "f" else rng.integers(-20, 20, d["shape"])
        it.set_tensor(d["index"], x.astype(dtype))
    for _ in range(WARMUP):
        it.invoke()
    times = []
    for _ in range(RUNS):
        t0 = time.thread_time()
        it.invoke()
        times.append(time.thread_time() - t0)
    on_xnnpack = any(o["op_name"] == "DELEGATE" for o in it._get_ops_details())  # noqa: SLF001 - the delegate's node replaces the op
    return float(np.median(times) * 1e6), on_xnnpack
