"""int8 quantization candidates: each one way of turning an fp32 ONNX model into an int8 (or partly int8) one.

ORT's defaults are often *slower* than fp32 on a given CPU (S8S8 QDQ, ConvInteger), and int8 pays
off per layer, not per model, so edgekit builds whole-model candidates and mixed ones (static int8
on the layers where it is faster, :mod:`edgekit.quantize.mixed`), measures each on this machine and
keeps the best for the objective (:mod:`edgekit.quantize.search`). A candidate is data;
:func:`build` turns it into a model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import logging
import platform
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgekit.choices import StrChoice
from edgekit.data import Dataset
from edgekit.errors import InputError
from edgekit.onnx_model import MIN_WEIGHT_ELEMENTS, iter_graphs

__all__ = ["FLOAT", "CalibrationMethod", "Candidate", "Kind", "build", "candidates_for", "pre_process"]


class Kind(StrChoice):
    FLOAT = "float"  # the float model itself: what "keep every layer float" ships
    STATIC = "static"
    DYNAMIC = "dynamic"
    WEIGHT_ONLY = "weight_only"


class CalibrationMethod(StrChoice):
    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"


@dataclass(frozen=True)
class Candidate:
    name: str
    kind: Kind
    quant_format: str = "QDQ"  # QDQ | QOperator
    activations: str = "u8"  # u8 | s8
    per_channel: bool = True
    op_types: tuple[str, ...] | None = None  # None: every op ORT can quantize
    note: str = ""
    #: static only: quantize just these nodes (None: all); the mixed-precision search fills it
    nodes: tuple[str, ...] | None = None
    #: store weights the quantizer leaves fp32 as int8 (dequantized at run time: smaller, slower in a plain session)
    int8_leftovers: bool = True
    #: built before the per-layer search (which may spend the rest of the budget): cheap, and for a model whose
    #: weights are mostly MatMul/Gemm (transformers, ConvNeXt) often the fastest and most accurate answer
    early: bool = False

    def params(self) -> dict:
        if self.kind is Kind.FLOAT:
            return {"kind": str(self.kind)}
        return {
            "kind": str(self.kind),
            "format": self.quant_format,
            "activations": self.activations,
            "weights": "s8",
            "per_channel": self.per_channel,
            "op_types": list(self.op_types) if self.op_types else "all",
            **({"int8_nodes": len(self.nodes)} if self.nodes is not None else {}),
        }


_LINEAR = ("MatMul", "Gemm")
#: with calibration data, a model whose MatMul/Gemm layers do at least this share of the multiply-adds tries dynamic int8
#: of them before the per-layer search (:func:`linear_share`)
LINEAR_FIRST = 0.5

STATIC_CANDIDATES = (
    Candidate("static-qdq-u8s8-perchannel", Kind.STATIC, "QDQ", "u8", True, note="QDQ, uint8 activations, per-channel int8 weights"),
    Candidate("static-qdq-u8s8-pertensor", Kind.STATIC, "QDQ", "u8", False, note="QDQ, uint8 activations, per-tensor weights"),
    Candidate("static-qop-u8s8-perchannel", Kind.STATIC, "QOperator", "u8", True, note="QLinear* operators, uint8 activations"),
    Candidate("static-qdq-s8s8-perchannel", Kind.STATIC, "QDQ", "s8", True, note="QDQ, int8 activations (ORT's default type)"),
)
DYNAMIC_CANDIDATES = (
    Candidate("dynamic", Kind.DYNAMIC, "QOperator", "u8", False, note="ORT quantize_dynamic defaults (ConvInteger/MatMulInteger)"),
    # convs stay fp32: their weights stored int8 would be dequantized on every run in a plain session
    Candidate("dynamic-linear-only", Kind.DYNAMIC, "QOperator", "u8", False, _LINEAR, note="dynamic int8 MatMul/Gemm, the rest float",
              int8_leftovers=False),
)
WEIGHT_ONLY = Candidate("weight-only", Kind.WEIGHT_ONLY, "QDQ", "-", True,
                        note="int8 weights dequantized on every run (float compute): the smallest file, slower than fp32")
FLOAT = Candidate("float", Kind.FLOAT, "-", "-", False, note="every layer float: int8 did not pay off")


def candidates_for(model: onnx.ModelProto, *, has_data: bool) -> list[Candidate]:
    """The whole-model candidates worth trying for this model, most promising first (the mixed ones are found by measuring).

    The search builds them in this order until its time budget is spent: the first static one also
    calibrates, and the per-layer search starts from it.
    """
    ops = {n.op_type for g in iter_graphs(model.graph) for n in g.node}
    qdq_pc, qdq_pt, qop_pc, s8s8 = STATIC_CANDIDATES
    out: list[Candidate] = [qdq_pc, qop_pc, qdq_pt] if has_data else []
    has_linear = bool(ops & set(_LINEAR))
    has_conv = bool(ops & {"Conv", "ConvTranspose"})
    dynamic, linear_only = DYNAMIC_CANDIDATES
    # dynamic int8 of the MatMul/Gemm layers: the linear-only one beside convolutions, else the whole-model one (the same there)
    linear_dynamic = linear_only if has_conv else dynamic
    early = has_data and has_linear and linear_share(model) >= LINEAR_FIRST
    if early:
        out.append(dataclasses.replace(linear_dynamic, early=True))
    out.append(WEIGHT_ONLY)
    if has_linear and has_conv and not early:
        out.append(linear_only)
    out += [s8s8] if has_data else []
    if not (early and linear_dynamic is dynamic):
        out.append(dynamic)
    out.append(FLOAT)  # keeping every layer float is always an answer: never slower than the model given
    return out


def linear_share(model: onnx.ModelProto) -> float:
    """The share of the model's Conv/MatMul/Gemm multiply-adds that MatMul/Gemm layers do (0 when it has none).

    A layer's multiply-adds are its weight's elements times the positions it is applied at: the output's pixels for a
    convolution, its rows (tokens) for a MatMul, from the shapes inference left in the model (1 where unknown). So a CNN's
    classifier, large in weights but applied once, counts for little, and a transformer's MatMuls for nearly all.
    """
    sizes = {t.name: int(np.prod(t.dims)) for g in iter_graphs(model.graph) for t in g.initializer}
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else 0 for d in v.type.tensor_type.shape.dim]
              for v in (*model.graph.value_info, *model.graph.output)}
    linear = other = 0
    for g in iter_graphs(model.graph):
        for n in g.node:
            if n.op_type not in (*_LINEAR, "Conv", "ConvTranspose"):
                continue
            w = max((sizes.get(x, 0) for x in n.input[:2]), default=0)  # MatMul's weight may be either input
            out = shapes.get(n.output[0], [])
            positions = [d for d in (out[:-1] if n.op_type in _LINEAR else out[2:]) if d > 0]
            macs = w * int(np.prod(positions, dtype=np.int64))
            if n.op_type in _LINEAR:
                linear += macs
            else:
                other += macs
    return linear / (linear + other) if linear + other else 0.0


class _Reader:
    """ORT CalibrationDataReader over a Dataset, in batches the model accepts."""

    def __init__(self, data: Dataset, batch: int, scalar: set[str]) -> None:
        self._it: Iterator = iter(self._batches(data, batch, scalar))

    @staticmethod
    def _batches(data: Dataset, batch: int, scalar: set[str]):
        for start in range(0, data.n - batch + 1 if batch > 1 else data.n, batch):
            yield data.take(start, batch)  # each input sliced on its own batch axis; a scalar takes the batch's first value

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # pragma: no cover - ORT calls it for some calibrators
        pass


@contextlib.contextmanager
def _quiet():
    """ORT's quantizer logs and prints freely; keep the CLI's output ours."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            yield buf
    finally:
        logger.setLevel(level)


def pre_process(model: onnx.ModelProto, workdir: Path) -> tuple[onnx.ModelProto, str]:
    """ORT's ``quant_pre_process`` (symbolic shape inference + graph optimization).

    Falls back to ONNX shape inference only, then to no pre-processing, when a model defeats
    the symbolic shape inference (it does for some control-flow graphs); the note says which ran.
    """
    from edgekit.ort_tools import quant_pre_process  # ORT's, run where its temp files cannot land in the user's directory

    src = workdir / "pre_in.onnx"
    dst = workdir / "pre_out.onnx"
    onnx.save(model, src)
    for kwargs, note in (
        ({}, "quant_pre_process: symbolic shape inference + optimization"),
        ({"skip_symbolic_shape": True}, "quant_pre_process without symbolic shape inference (it failed on this model)"),
    ):
        try:
            with _quiet():
                quant_pre_process(str(src), str(dst), **kwargs)
            return _unless_grown(model, onnx.load(str(dst)), note)
        except Exception:  # noqa: BLE001 - any failure here falls back to the next, plainer pass
            continue
    return model, "pre-processing skipped (quant_pre_process failed on this model)"


def _unless_grown(model: onnx.ModelProto, pre: onnx.ModelProto, note: str) -> tuple[onnx.ModelProto, str]:
    """``pre``, unless pre-processing grew the model: ORT's optimizer copies weights an If branch reads from its outer
    scope into each nested branch (silero-vad: 2.3 -> 3.3 MB, its LSTM weights twice), which no int8 candidate undoes."""
    before, after = model.ByteSize(), pre.ByteSize()
    if after > before * 1.05:
        return model, f"pre-processing skipped: it grew the model from {before:,} to {after:,} bytes (weights copied into subgraphs)"
    return pre, note


def build(
    model_path: Path,
    cand: Candidate,
    out_path: Path,
    *,
    calib: Dataset | None,
    calib_batch: int,
    scalar_inputs: set[str],
    method: CalibrationMethod,
    cache: Path,
    exclude: tuple[str, ...] = (),
) -> None:
    """Write the quantized model for ``cand`` to ``out_path``. Calibration is cached in ``cache``."""
    from onnxruntime.quantization import CalibrationMethod as OrtCalib
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    if cand.kind is Kind.FLOAT or (cand.nodes is not None and not cand.nodes):
        shutil.copyfile(model_path, out_path)  # an empty node list means "none" here, where ORT would read "all"
        return
    if cand.kind is Kind.WEIGHT_ONLY:
        onnx.save(weight_only_int8(onnx.load(str(model_path)), exclude=exclude), out_path)
        return
    with _quiet():
        if cand.kind is Kind.DYNAMIC:
            # the dynamic quantizer first rewrites each Gemm as "<name>_MatMul" + "<name>_Add", then matches names
            renamed = [f"{n}_{op}" for n in exclude for op in ("MatMul", "Add")]
            quantize_dynamic(
                str(model_path), str(out_path),
                op_types_to_quantize=list(cand.op_types) if cand.op_types else None,
                per_channel=cand.per_channel, weight_type=QuantType.QInt8, nodes_to_exclude=[*exclude, *renamed],
                reduce_range=seven_bit_weights(), extra_options={"MatMulConstBOnly": True},
            )
            if cand.int8_leftovers:
                _int8_leftovers(out_path, (*exclude, *renamed))
            return
        if calib is None:
            raise InputError("static quantization needs calibration data (--data)")
        ort_method = {"minmax": OrtCalib.MinMax, "entropy": OrtCalib.Entropy, "percentile": OrtCalib.Percentile}[str(method)]
        quantize_static(
            str(model_path), str(out_path),
            calibration_data_reader=_Reader(calib, calib_batch, scalar_inputs) if not cache.is_file() else None,
            quant_format=QuantFormat.QDQ if cand.quant_format == "QDQ" else QuantFormat.QOperator,
            per_channel=cand.per_channel,
            activation_type=QuantType.QUInt8 if cand.activations == "u8" else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            reduce_range=seven_bit_weights(),
            nodes_to_exclude=list(exclude),
            nodes_to_quantize=list(cand.nodes) if cand.nodes is not None else None,
            calibrate_method=ort_method,
            calibration_cache_path=str(cache),
            extra_options={"ActivationSymmetric": cand.activations == "s8", "WeightSymmetric": True},
        )
    if cand.nodes is None:  # a mixed model's float layers stay float: that is the point of it
        _int8_leftovers(out_path, exclude)


@functools.cache
def seven_bit_weights() -> bool:
    """Whether int8 weights get 7 bits (ORT's ``reduce_range``) on this machine: on an x86-64 CPU without VNNI,
    onnxruntime's u8 x s8 kernels add pairs of products in int16 (VPMADDUBSW) and saturate with 8-bit weights, so
    the int8 model measured here would give other numbers than the same file on an ARM device or a VNNI CPU (the
    self-test the agent runs would fail there). With 7-bit weights no pair saturates: every CPU computes the same."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return True  # unknown x86: the safe choice
    return not any(f in flags for f in (" avx512_vnni", " avx_vnni", " amx_int8"))


def _int8_leftovers(path: Path, exclude: tuple[str, ...]) -> None:
    """Store the weights ORT's quantizers left fp32 as int8 too (weight-only).

    ORT does not quantize inside If/Loop subgraphs, and dynamic-linear-only leaves convolutions
    alone; without this pass such a model would be reported int8 while most bytes stay fp32.
    """
    model = onnx.load(str(path))
    rewritten = weight_only_int8(model, exclude=exclude)
    if rewritten.ByteSize() != model.ByteSize():
        onnx.save(rewritten, str(path))


def weight_only_int8(model: onnx.ModelProto, *, exclude: tuple[str, ...] = ()) -> onnx.ModelProto:
    """Store every fp32 weight of Conv/Gemm/MatMul as int8 + per-channel scale behind a DequantizeLinear.

    onnxruntime has no weight-only int8 for Conv (``MatMulNBits`` covers MatMul only), and this
    is a pure storage change: symmetric per-output-channel int8, dequantized to float in the graph,
    compute unchanged. It is always int8-sized; in a plain session onnxruntime runs every
    DequantizeLinear on every inference (and cannot pre-pack the weights), so it is slower than fp32.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    opset = next((o.version for o in out.opset_import if o.domain in ("", "ai.onnx")), 13)
    for g in iter_graphs(out.graph):
        new_nodes = []
        for w_name, axis in _weights(g, exclude).items():
            t = next(t for t in g.initializer if t.name == w_name)
            q, scale = _sym_int8(numpy_helper.to_array(t).astype(np.float32), axis if opset >= 13 else None)  # per-axis DQ: opset 13
            g.initializer.remove(t)
            qn, sn = f"{w_name}_wq", f"{w_name}_wscale"
            g.initializer.extend([numpy_helper.from_array(q, qn), numpy_helper.from_array(scale, sn)])
            attrs = {"axis": axis} if axis is not None and opset >= 13 else {}
            # symmetric: no zero point (optional in DequantizeLinear, 0 by default for an int8 input)
            new_nodes.append(onnx.helper.make_node("DequantizeLinear", [qn, sn], [w_name], name=f"{w_name}_DequantizeLinear", **attrs))
        if new_nodes:
            nodes = new_nodes + list(g.node)
            del g.node[:]
            g.node.extend(nodes)
    return out


_WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: ops that only cut or reshape a weight on its way to a weighted op (an LSTM cell exported from PyTorch slices its
#: gate matrices out of one weight): storing that weight as int8 is the same storage change
_LAYOUT = ("Slice", "Split", "Reshape", "Transpose", "Unsqueeze", "Squeeze", "Identity")
_RECURRENT = ("LSTM", "GRU", "RNN")  # W (input 1) and R (input 2): [directions, gates x hidden, size]


def _weights(g: onnx.GraphProto, exclude: tuple[str, ...]) -> dict[str, int | None]:
    """fp32 weights of this graph to store as int8 → the axis of their per-channel scale. A weight qualifies when
    every consumer reads it as a weight (Conv/Gemm/MatMul input 1, LSTM/GRU/RNN inputs 1-2) or only cuts or reshapes
    it (input 0 of a layout op); constants that are not weights (shapes, biases, tables) are left alone."""
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    # nodes of nested graphs (Loop/If bodies) read the weights of the graph around them too (silero-vad's LSTM)
    for sub in iter_graphs(g):
        for n in sub.node:
            for i, name in enumerate(n.input):
                consumers.setdefault(name, []).append((n, i))
    out: dict[str, int | None] = {}
    for t in g.initializer:
        uses = consumers.get(t.name, [])
        if t.data_type != onnx.TensorProto.FLOAT or len(t.dims) < 2 or np.prod(t.dims) < MIN_WEIGHT_ELEMENTS or not uses:
            continue
        if any(n.name in exclude for n, _ in uses):
            continue
        weighted = [n for n, i in uses if n.op_type in _WEIGHTED and i == 1]
        if len(weighted) == len(uses):
            out[t.name] = _channel_axis(weighted[0], numpy_helper.to_array(t))
        elif all((n.op_type in _LAYOUT and i == 0) or (n.op_type in _RECURRENT and i in (1, 2)) for n, i in uses):
            out[t.name] = 1 if any(n.op_type in _RECURRENT for n, _ in uses) else 0
    return out


def _channel_axis(node: onnx.NodeProto, w: np.ndarray) -> int | None:
    if w.ndim < 2:
        return None
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return w.ndim - 1  # MatMul: B is [..., K, N]; N is the output channel


def _sym_int8(w: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    if axis is None:
        amax = np.abs(w).max()
        scale = np.array(max(float(amax), 1e-12) / 127.0, dtype=np.float32)
        return np.clip(np.round(w / scale), -127, 127).astype(np.int8), scale
    red = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.abs(w).max(axis=red, keepdims=True)
    scale = np.maximum(amax, 1e-12) / 127.0
    q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
    return q, scale.reshape(-1).astype(np.float32)


def tempdir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="edgekit.")
