"""Per-layer error of a quantized ONNX model against its float model: which layers lose the most.

The same idea as onnxruntime's ``quantization.qdq_loss_debug`` (expose intermediate tensors in
both models, run both on the same data, compare tensor by tensor), extended to every int8 form
edgekit writes: QDQ models (compared after each activation's Quantize/Dequantize pair, so a
layer is charged with its own output rounding), QOperator models (``QLinearConv`` outputs are
dequantized with their own scale and zero point), dynamic and weight-only models (their float
outputs keep the original names). Tensors are matched by name; node names are the quantized
model's, i.e. what ``edgekit compress --exclude NODE`` takes.

For each matched tensor: SQNR in dB (cumulative: everything upstream included), relative RMS
error, max abs error, and the *added* relative error: the noise this layer adds on top of what
its inputs already carried (noise powers add), which is what ranks the layers to exclude.
Statistics are accumulated batch by batch, so memory stays at one batch of activations, and
batches are sized to the activations (at most BATCH_BYTES per batch, TOTAL_BYTES in all).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from device_agent.contract.manifest import TensorSpec
from edgekit.data import Dataset
from edgekit.export.compact import restore_names
from edgekit.signature import batch_size, fixed_batch

__all__ = ["LayerError", "LayerRun", "layer_errors", "measure_layers"]

#: at most this many samples are pushed through both models
MAX_SAMPLES = 128
#: samples per batch, at most; fewer when the intermediate tensors of one sample are large
MAX_BATCH = 32
#: intermediate tensors (both models) held for one batch, at most
BATCH_BYTES = 512 * 2**20
#: intermediate tensors pushed through in all, at most: fewer samples when each one is huge
TOTAL_BYTES = 4 * 2**30
#: the report lists at most this many layers (worst first)
MAX_LAYERS = 200
_QDQ = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
#: QOperator ops → (output scale input index, output zero-point input index)
_QOP_OUT = {
    "QLinearConv": (6, 7), "QLinearMatMul": (6, 7), "QLinearAdd": (6, 7), "QLinearMul": (6, 7), "QGemm": (7, 8),
    "QLinearGlobalAveragePool": (3, 4), "QLinearAveragePool": (3, 4), "QLinearSigmoid": (3, 4), "QLinearLeakyRelu": (3, 4),
    "QLinearSoftmax": (3, 4), "QLinearConcat": (0, 1), "QuantizeLinear": (1, 2),
}
#: ops that move 8-bit values without changing their scale
_PASSTHROUGH = {"MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Gather", "Identity", "Resize"}
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}


@dataclass(frozen=True)
class LayerError:
    node: str  # name in the quantized model (what --exclude takes); "(input x)" for a graph input
    op_type: str  # the float model's op producing the tensor
    tensor: str
    sqnr_db: float | None  # None: no error at all
    rel_error: float  # RMS(error) / RMS(float), cumulative
    added_rel_error: float  # the part this layer adds on top of its inputs' error
    max_abs_error: float

    def to_dict(self) -> dict:
        return {
            "node": self.node, "op_type": self.op_type, "tensor": self.tensor,
            "sqnr_db": None if self.sqnr_db is None else round(self.sqnr_db, 2),
            "rel_error": float(f"{self.rel_error:.4g}"), "added_rel_error": float(f"{self.added_rel_error:.4g}"),
            "max_abs_error": float(f"{self.max_abs_error:.4g}"),
        }


@dataclass(frozen=True)
class LayerRun:
    """The ranked layers, and how many samples in batches of how many were pushed through both models."""

    errors: list[LayerError]
    samples: int = 0
    batch: int = 0
    sample_bytes: int = 0  # intermediate tensors of both models for one sample
    bounded: bool = False  # the activations' size cut the batch or the samples

    def note(self, wanted: int) -> str | None:
        """What the report says when the activations' size cut the samples or the batch (None: it did not)."""
        if not self.bounded:
            return None
        return (f"intermediate tensors take {self.sample_bytes / 2**20:,.0f} MB per sample: measured on {self.samples} of {wanted} "
                f"samples, {self.batch} at a time (at most {BATCH_BYTES // 2**20} MB per batch, {TOTAL_BYTES // 2**30} GB in all)")


def layer_errors(
    float_model: str | Path | onnx.ModelProto,
    quant_model: str | Path | onnx.ModelProto,
    data: Dataset,
    inputs: tuple[TensorSpec, ...],
    *,
    max_samples: int = MAX_SAMPLES,
    threads: int = 1,
    names: dict[str, str] | None = None,
    scratch: Path | None = None,
) -> list[LayerError]:
    """Layers of ``quant_model`` ranked by the error they add (worst first), measured on ``data``.

    ``data`` is in the float model's layout (both models are ONNX with the same signature).
    Returns [] when no tensor can be matched (e.g. a model rewritten beyond recognition).
    ``names``: short → original tensor names of a compactly stored ``quant_model`` (the manifest's
    ``artifact.extra["tensor_names"]``), restored before matching. ``scratch``: where the temporary models go (a run's
    work directory, which a Ctrl-C run removes whole); None: the system's temporary directory.
    """
    return measure_layers(float_model, quant_model, data, inputs, max_samples=max_samples, threads=threads, names=names,
                          scratch=scratch).errors


def measure_layers(
    float_model: str | Path | onnx.ModelProto,
    quant_model: str | Path | onnx.ModelProto,
    data: Dataset,
    inputs: tuple[TensorSpec, ...],
    *,
    max_samples: int = MAX_SAMPLES,
    threads: int = 1,
    names: dict[str, str] | None = None,
    scratch: Path | None = None,
) -> LayerRun:
    """:func:`layer_errors`, with how many samples were measured in what batches (bounded by the activations' size)."""
    fm = _load(float_model)
    qm = restore_names(_load(quant_model), names or {})
    pairs, extra_nodes, q_producer = _match(fm, qm)
    if not pairs:
        return LayerRun([])
    f_names = [f for f, _ in pairs.values()]
    q_names = [q for _, q in pairs.values()]
    with tempfile.TemporaryDirectory(prefix="edgekit.layers.", dir=scratch) as tmp:
        f_sess = _session(_with_outputs(fm, f_names, []), Path(tmp) / "float.onnx", threads)
        q_sess = _session(_with_outputs(qm, q_names, extra_nodes), Path(tmp) / "quant.onnx", threads)
        stats, run = _accumulate(f_sess, q_sess, pairs, data.subset(max_samples), inputs)
    return LayerRun(_rank(fm, pairs, stats, q_producer), *run)


def _load(m: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    return m if isinstance(m, onnx.ModelProto) else onnx.load(str(m))


def _match(fm: onnx.ModelProto, qm: onnx.ModelProto) -> tuple[dict[str, tuple[str, str]], list[onnx.NodeProto], dict[str, onnx.NodeProto]]:
    """float tensor → (float name, quantized-model tensor to compare), DQ nodes to add, tensor → quantized-model node."""
    f_tensors = [i.name for i in fm.graph.input] + [o for n in fm.graph.node for o in n.output]
    f_types = _float_tensors(fm)
    f_consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in fm.graph.node:
        for i in n.input:
            f_consumers.setdefault(i, []).append(n)
    q_out = {o: n for n in qm.graph.node for o in n.output}
    q_inputs = {i.name for i in qm.graph.input}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in qm.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    scales = _qop_scales(qm)
    pairs: dict[str, tuple[str, str]] = {}
    extra: list[onnx.NodeProto] = []
    producer: dict[str, onnx.NodeProto] = {}
    for t in f_tensors:
        if t in pairs or t not in f_types:
            continue
        qdq = _after_qdq(t, consumers)
        if qdq is None and f"{t}_quantized" not in scales and (t in q_out or t in q_inputs):
            node = q_out.get(t)
            if node is not None and node.op_type in _QDQ:
                node = _before_qdq(node, q_out)  # a graph output: compute node → Q → DQ named as the output
                if node is None:
                    continue
            pairs[t] = (t, t)
            if node is not None:
                producer[t] = node
        elif qdq is not None:  # QDQ: compare what the next layers see, after this tensor's Quantize/Dequantize
            pairs[t] = (t, qdq)
            if t in q_out:
                producer[t] = q_out[t]
        elif f"{t}_quantized" in scales:  # QOperator: dequantize the 8-bit output with its own scale
            q = f"{t}_quantized"
            scale, zp = scales[q]
            out = f"{t}__edgekit_dq"
            extra.append(helper.make_node("DequantizeLinear", [q, scale, zp], [out], name=f"{t}__edgekit_dq"))
            # a Relu the quantizer dropped (the uint8 range clips at zero) is inside this output: compare after it
            after = f_consumers.get(t, [])
            if len(after) == 1 and after[0].op_type in ("Relu", "Clip") and after[0].output[0] not in q_out \
                    and f"{after[0].output[0]}_quantized" not in scales:
                t = after[0].output[0]
            pairs[t] = (t, out)
            producer[t] = q_out[q]
    return pairs, extra, producer


def _after_qdq(t: str, consumers: dict[str, list[onnx.NodeProto]]) -> str | None:
    """The DequantizeLinear output that follows ``t``'s QuantizeLinear, i.e. what the next layers see."""
    for q in consumers.get(t, []):
        if q.op_type == "QuantizeLinear":
            for dq in consumers.get(q.output[0], []):
                if dq.op_type == "DequantizeLinear":
                    return dq.output[0]
    return None


def _before_qdq(dq: onnx.NodeProto, q_out: dict[str, onnx.NodeProto]) -> onnx.NodeProto | None:
    """The compute node behind a DequantizeLinear(QuantizeLinear(x)) pair, if that is what ``dq`` ends."""
    if dq.op_type != "DequantizeLinear":
        return None
    q = q_out.get(dq.input[0])
    if q is None or q.op_type != "QuantizeLinear":
        return None
    src = q_out.get(q.input[0])
    return src if src is not None and src.op_type not in _QDQ else None


def _qop_scales(qm: onnx.ModelProto) -> dict[str, tuple[str, str]]:
    """8-bit activation tensor → (scale, zero point) names, for QOperator models."""
    out: dict[str, tuple[str, str]] = {}
    for n in qm.graph.node:
        idx = _QOP_OUT.get(n.op_type)
        if idx is not None and len(n.input) > max(idx):
            out[n.output[0]] = (n.input[idx[0]], n.input[idx[1]])
        elif n.op_type in _PASSTHROUGH and n.input and n.input[0] in out:
            out[n.output[0]] = out[n.input[0]]
    return out


def _float_tensors(m: onnx.ModelProto) -> set[str]:
    """Names of float tensors in ``m`` (inputs and node outputs), by shape inference."""
    try:
        inferred = onnx.shape_inference.infer_shapes(m)
    except Exception:  # noqa: BLE001 - a model inference cannot type still has typed graph inputs
        inferred = m
    vis = list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output)
    known = {v.name: v.type.tensor_type.elem_type for v in vis}
    names = set()
    for name in [i.name for i in m.graph.input] + [o for n in m.graph.node for o in n.output]:
        if known.get(name, onnx.TensorProto.FLOAT) in _FLOAT_TYPES:  # untyped: try it, compare skips non-float
            names.add(name)
    return names


def _with_outputs(m: onnx.ModelProto, names: list[str], extra_nodes: list[onnx.NodeProto]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(m)
    out.graph.node.extend(extra_nodes)
    have = {o.name for o in out.graph.output}
    for n in names:
        if n not in have:
            out.graph.output.append(helper.make_empty_tensor_value_info(n))
            have.add(n)
    return out


def _session(m: onnx.ModelProto, path: Path, threads: int):
    import onnxruntime as ort

    onnx.save(m, str(path))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, threads)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _accumulate(f_sess, q_sess, pairs: dict[str, tuple[str, str]], data: Dataset,
                inputs: tuple[TensorSpec, ...]) -> tuple[dict[str, list[float]], tuple[int, int, int, bool]]:
    """tensor → [Σ float², Σ error², max |error|] over the data; and (samples, batch, bytes per sample, bounded) as run.

    Every intermediate tensor of both models is an output here (PP-OCR's detector: 281 MB per 320x320
    sample), so the first batch measures them and the rest is sized to BATCH_BYTES per batch and
    TOTAL_BYTES in all.
    """
    fixed = fixed_batch(inputs)
    stats: dict[str, list[float]] = {t: [0.0, 0.0, 0.0] for t in pairs}
    first = fixed or 1
    if data.n < first:
        return stats, (0, first, 0, False)
    sample_bytes = _add_batch(f_sess, q_sess, pairs, data.take(0, first), stats) // first
    natural = batch_size(inputs, MAX_BATCH)
    batch = fixed or min(natural, max(1, BATCH_BYTES // max(1, sample_bytes)))
    samples = min(data.n, max(first, TOTAL_BYTES // max(1, sample_bytes)))
    bounded = batch < min(natural, data.n) or samples < data.n
    start = first
    while start < samples:
        if fixed and start + batch > samples:
            break
        _add_batch(f_sess, q_sess, pairs, data.take(start, min(batch, samples - start)), stats)
        start += batch
    return stats, (min(start, samples), batch, sample_bytes, bounded)


def _add_batch(f_sess, q_sess, pairs: dict[str, tuple[str, str]], feeds: dict[str, np.ndarray], stats: dict[str, list[float]]) -> int:
    """Run both models on one batch and add its errors to ``stats``; returns the bytes of their outputs."""
    f_outs = [o.name for o in f_sess.get_outputs()]
    q_outs = [o.name for o in q_sess.get_outputs()]
    q_feeds_names = {i.name for i in q_sess.get_inputs()}
    fr = dict(zip(f_outs, f_sess.run(f_outs, feeds), strict=True))
    qr = dict(zip(q_outs, q_sess.run(q_outs, {k: v for k, v in feeds.items() if k in q_feeds_names}), strict=True))
    for t, (fname, qname) in pairs.items():
        f = fr.get(fname, feeds.get(fname))
        q = qr.get(qname, feeds.get(qname))
        if f is None or q is None or np.shape(f) != np.shape(q) or not np.issubdtype(np.asarray(f).dtype, np.floating):
            continue
        f64 = np.asarray(f, dtype=np.float64)
        err = np.asarray(q, dtype=np.float64) - f64
        s = stats[t]
        s[0] += float(np.square(f64).sum())
        s[1] += float(np.square(err).sum())
        s[2] = max(s[2], float(np.abs(err).max(initial=0.0)))
    return sum(int(np.asarray(v).nbytes) for v in (*fr.values(), *qr.values()))


def _rank(fm: onnx.ModelProto, pairs: dict[str, tuple[str, str]], stats: dict[str, list[float]],
          q_producer: dict[str, onnx.NodeProto]) -> list[LayerError]:
    f_producer = {o: n for n in fm.graph.node for o in n.output}
    f_names = {n.name for n in fm.graph.node}
    nsr = {t: (s[1] / s[0] if s[0] > 0 else 0.0) for t, s in stats.items() if s[0] > 0 or s[1] > 0}
    memo: dict[str, float] = {}

    def upstream(t: str, depth: int = 0) -> float:
        """The error a tensor's nearest measured ancestors carry (unmeasured tensors are walked through)."""
        node = f_producer.get(t)
        if node is None or depth > 50:
            return 0.0
        if t not in memo:
            memo[t] = max((nsr[i] if i in nsr else upstream(i, depth + 1) for i in node.input if i), default=0.0)
        return memo[t]

    out = []
    for t in pairs:
        if t not in nsr:
            continue
        fnode = f_producer.get(t)
        added = max(0.0, nsr[t] - upstream(t))
        sq = None if nsr[t] == 0 else 10 * math.log10(1 / nsr[t])
        name, op = _exclude_name(q_producer.get(t), fnode, f_names, t)
        out.append(LayerError(name, op, t, sq, math.sqrt(nsr[t]), math.sqrt(added), stats[t][2]))
    out.sort(key=lambda e: (-e.added_rel_error, -e.rel_error, e.node))
    return out[:MAX_LAYERS]


def _exclude_name(qnode: onnx.NodeProto | None, fnode: onnx.NodeProto | None, f_names: set[str], t: str) -> tuple[str, str]:
    """The node name ``--exclude`` takes (a float-model name) and the op that computes the tensor.

    QDQ models keep node names (a fused Conv+Relu is the Conv); QOperator ones add ``_quant``;
    dynamic ones end in a helper node (``..._bias_add``), where the float node is the answer.
    """
    if qnode is not None:
        if qnode.name in f_names:
            return qnode.name, qnode.op_type
        if qnode.name.endswith("_quant") and qnode.name[: -len("_quant")] in f_names:
            return qnode.name[: -len("_quant")], qnode.op_type
    if fnode is not None:
        return fnode.name, fnode.op_type
    return f"(input {t})", "input"
