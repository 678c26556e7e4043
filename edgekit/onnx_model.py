"""Loading ONNX models with precise errors, and reading facts off them.

Everything here works on ``onnx.ModelProto`` and never modifies its argument.
"""

from __future__ import annotations

import copy
import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from device_agent.contract.manifest import TensorSpec
from edgekit.errors import InputError
from edgekit.signature import IntRange

__all__ = [
    "QUANTIZED_OPS",
    "WEIGHTED_OPS",
    "WeightStats",
    "fold_constants",
    "gzip_size",
    "int_input_ranges",
    "io_specs",
    "iter_graphs",
    "load_onnx",
    "upgrade_opset",
    "weight_stats",
]

#: Ops whose second input is a weight worth quantizing.
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "Attention", "LSTM", "GRU", "RNN", "Einsum"})
#: Ops that only appear in a model that is already quantized.
QUANTIZED_OPS = frozenset(
    {
        "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
        "ConvInteger", "MatMulInteger", "QGemm", "QLinearAdd", "QLinearMul", "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat", "MatMulNBits", "QAttention", "DynamicQuantizeLSTM",
    }
)
_FLOAT = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
_INT8 = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT4, onnx.TensorProto.UINT4}
#: Tensors smaller than this are shapes, scales and biases, not weights.
MIN_WEIGHT_ELEMENTS = 16


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Load and check an ONNX file, naming the problem and the fix when it can't be used."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"model file not found: {p}")
    if p.is_dir():
        raise InputError(f"{p} is a directory; pass the .onnx file inside it")
    if p.stat().st_size == 0:
        raise InputError(f"{p} is empty (0 bytes); re-export the model")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # protobuf raises DecodeError, RuntimeWarning-derived errors, ...
        raise InputError(f"{p} is not an ONNX model (it does not parse as ONNX protobuf: {_line(e)}); pass a .onnx file") from None
    if not model.graph.node:
        raise InputError(f"{p} is not an ONNX model with a graph (no nodes were read); the file may be truncated or of another format")
    _load_external(model, p)
    try:
        onnx.checker.check_model(model, full_check=False)
    except onnx.checker.ValidationError as e:
        raise InputError(f"{p} is not a valid ONNX model (truncated or corrupt?): {_line(e)}") from None
    return model


def _load_external(model: onnx.ModelProto, p: Path) -> None:
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    locations = sorted({
        e.value for t in _get_all_tensors(model) if uses_external_data(t) for e in t.external_data if e.key == "location"
    })
    if not locations:
        return
    missing = [loc for loc in locations if not (p.parent / loc).is_file()]
    if missing:
        raise InputError(
            f"{p.name} keeps its weights in external data file(s) {', '.join(missing)}, not found next to it in {p.parent}; "
            "copy them beside the model (or re-export with the weights inside the .onnx)"
        )
    try:
        onnx.load_external_data_for_model(model, str(p.parent))
    except Exception as e:
        raise InputError(f"{p.name}: cannot read external data {', '.join(locations)}: {_line(e)}") from None
    if model.ByteSize() > 1_900_000_000:
        raise InputError(f"{p.name} is larger than 2 GB with its external data; edgekit handles models below 2 GB")


def iter_graphs(graph: onnx.GraphProto):
    """The graph and every subgraph (If branches, Loop/Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from iter_graphs(g)


def fold_constants(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Turn tensor-valued ``Constant`` nodes into initializers, in every (sub)graph.

    Exporters (torch.onnx with constant folding off, TF converters) often keep weights in
    ``Constant`` nodes; quantizers only see initializers. Returns the new model and the count.
    """
    out = copy.deepcopy(model)
    folded = 0
    for g in iter_graphs(out.graph):
        keep = []
        for node in g.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.output) == 1:
                tensor = _constant_tensor(node)
                if tensor is not None:
                    tensor.name = node.output[0]
                    g.initializer.append(tensor)
                    folded += 1
                    continue
            keep.append(node)
        if len(keep) != len(g.node):
            del g.node[:]
            g.node.extend(keep)
    # Initializers need not be graph inputs since IR 4; older models list them, which blocks
    # constant folding and quantization of those weights.
    if out.ir_version >= 4:
        names = {i.name for i in out.graph.initializer}
        inputs = [i for i in out.graph.input if i.name not in names]
        if len(inputs) != len(out.graph.input):
            del out.graph.input[:]
            out.graph.input.extend(inputs)
    return out, folded


def _constant_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    for attr in node.attribute:
        if attr.name == "value":
            return copy.deepcopy(attr.t)
        if attr.name == "value_float":
            return numpy_helper.from_array(np.array(attr.f, dtype=np.float32))
        if attr.name == "value_floats":
            return numpy_helper.from_array(np.array(list(attr.floats), dtype=np.float32))
        if attr.name == "value_int":
            return numpy_helper.from_array(np.array(attr.i, dtype=np.int64))
        if attr.name == "value_ints":
            return numpy_helper.from_array(np.array(list(attr.ints), dtype=np.int64))
    return None  # sparse_value / string constants stay as they are


@dataclass(frozen=True)
class WeightStats:
    """What a model's weights are made of. Element counts, tensors below MIN_WEIGHT_ELEMENTS ignored."""

    float_params: int
    int8_params: int
    other_params: int
    weighted_nodes: int
    quantized_nodes: int
    quant_op_nodes: int
    zero_params: int

    @property
    def params(self) -> int:
        return self.float_params + self.int8_params + self.other_params

    @property
    def quantized_share(self) -> float:
        """Share of weight elements stored as 8-bit (or narrower) integers."""
        total = self.float_params + self.int8_params
        return self.int8_params / total if total else 0.0

    @property
    def sparsity(self) -> float:
        total = self.float_params + self.int8_params
        return self.zero_params / total if total else 0.0

    @property
    def is_quantized(self) -> bool:
        return self.quant_op_nodes > 0 or self.quantized_share > 0.5

    def to_dict(self) -> dict:
        return {
            "params": self.params,
            "float_params": self.float_params,
            "int8_params": self.int8_params,
            "quantized_share": round(self.quantized_share, 4),
            "sparsity": round(self.sparsity, 4),
            "weighted_nodes": self.weighted_nodes,
            "quantized_nodes": self.quantized_nodes,
        }


_QUANT_COMPUTE = {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm", "DynamicQuantizeMatMul",
                  "MatMulIntegerToFloat", "MatMulNBits", "QAttention", "DynamicQuantizeLSTM"}


def weight_stats(model: onnx.ModelProto) -> WeightStats:
    """Count float and int8 weights everywhere (initializers and Constants, subgraphs included)."""
    f = i8 = other = zeros = weighted = quantized = qops = 0
    for g in iter_graphs(model.graph):
        tensors = list(g.initializer) + [a.t for n in g.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"]
        producers = {o: n for n in g.node for o in n.output}
        init_types = {t.name: t.data_type for t in g.initializer}
        # float tensors read by quantization ops are scales: metadata, not weights
        scales = {i for n in g.node if n.op_type in QUANTIZED_OPS for i in n.input[1:]}
        for t in tensors:
            n = int(np.prod(t.dims)) if len(t.dims) else 1
            if n < MIN_WEIGHT_ELEMENTS or (t.name in scales and t.data_type in _FLOAT):
                continue
            if t.data_type in _FLOAT:
                f += n
                zeros += n - int(np.count_nonzero(numpy_helper.to_array(t)))
            elif t.data_type in _INT8:
                i8 += n
                if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8):
                    arr = numpy_helper.to_array(t)
                    zeros += n - int(np.count_nonzero(arr))  # approximate: zero-point 0 (symmetric weights)
            else:
                other += n
        for node in g.node:
            if node.op_type in QUANTIZED_OPS:
                qops += 1
            if node.op_type in _QUANT_COMPUTE:
                weighted += 1
                quantized += 1
            elif node.op_type in WEIGHTED_OPS and len(node.input) > 1:
                weighted += 1
                w = node.input[1]
                src = producers.get(w)
                if src is not None and src.op_type == "DequantizeLinear" and init_types.get(src.input[0]) in _INT8:
                    quantized += 1
    return WeightStats(f, i8, other, weighted, quantized, qops, zeros)


def io_specs(model: onnx.ModelProto) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Input (excluding initializers) and output signatures, symbolic dims kept as names."""
    inits = {i.name for i in model.graph.initializer}

    def spec(v: onnx.ValueInfoProto) -> TensorSpec:
        tt = v.type.tensor_type
        if tt.elem_type == onnx.TensorProto.STRING:
            dtype = "string"
        else:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name if tt.elem_type else "float32"
        # a size <= 0 is "dynamic" in some exporters (Paddle writes -1): symbolic, like a dim without a value
        shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?") for d in tt.shape.dim)
        layout = "NCHW" if len(shape) == 4 and isinstance(shape[1], int) and shape[1] in (1, 3, 4) else None
        return TensorSpec(v.name, dtype, shape, layout)

    return (
        tuple(spec(v) for v in model.graph.input if v.name not in inits),
        tuple(spec(v) for v in model.graph.output),
    )


#: ops that carry an index tensor's values through unchanged (only its type or shape changes)
_INDEX_PASSTHROUGH = frozenset({"Cast", "Identity", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Expand", "Transpose"})
_INT_TYPES = frozenset({onnx.TensorProto.INT8, onnx.TensorProto.INT16, onnx.TensorProto.INT32, onnx.TensorProto.INT64,
                        onnx.TensorProto.UINT8, onnx.TensorProto.UINT16, onnx.TensorProto.UINT32, onnx.TensorProto.UINT64})


def int_input_ranges(model: onnx.ModelProto) -> dict[str, IntRange]:
    """The values each integer graph input can take, read off how the graph uses it.

    An input that ``Gather`` uses as indices into a table (token ids into an embedding, token types
    into a 2-row table) takes 0 .. rows - 1; one the graph compares with constants (``Equal(sr, 16000)``)
    takes those constants. Inputs nothing bounds are left out (generated inputs give them 0/1).
    """
    g = model.graph
    known = {t.name: t for t in g.initializer} | {
        n.output[0]: a.t for n in g.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    out = {}
    for vi in g.input:
        if vi.name not in known and vi.type.tensor_type.elem_type in _INT_TYPES:
            r = _int_range(vi.name, consumers, known)
            if r is not None:
                out[vi.name] = r
    return out


def _int_range(name: str, consumers: dict[str, list[onnx.NodeProto]], known: dict[str, onnx.TensorProto]) -> IntRange | None:
    rows: list[tuple[int, str]] = []
    values: set[int] = set()
    frontier, seen = [name], {name}
    while frontier:
        t = frontier.pop()
        for n in consumers.get(t, []):
            if n.op_type in _INDEX_PASSTHROUGH and n.input[0] == t and n.output[0] not in seen:
                seen.add(n.output[0])
                frontier.append(n.output[0])
            elif n.op_type == "Gather" and len(n.input) > 1 and n.input[1] == t and n.input[0] in known:
                axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
                dims = list(known[n.input[0]].dims)
                if -len(dims) <= axis < len(dims):
                    rows.append((int(dims[axis]), n.input[0]))
            elif n.op_type == "Equal" and len(n.input) == 2:
                other = n.input[1] if n.input[0] == t else n.input[0]
                if other in known and 0 < int(np.prod(known[other].dims)) <= 16:
                    values.update(int(v) for v in numpy_helper.to_array(known[other]).ravel())
    if rows:
        size, table = min(rows)
        return IntRange(0, size, f"the rows of {table} it indexes")
    if values:
        return IntRange(min(values), max(values) + 1, "the values the graph compares it with", tuple(sorted(values)))
    return None


def upgrade_opset(model: onnx.ModelProto, target: int) -> tuple[onnx.ModelProto, int | None]:
    """``model`` converted up to opset ``target`` (onnx.version_converter) when its default-domain opset is older.

    Returns the model and the opset it had when converted; None (and the model as it is) when it was
    already recent enough or the converter cannot take it.
    """
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or opset >= target:
        return model, None
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(model, target)
        onnx.checker.check_model(converted)
    except Exception:  # noqa: BLE001 - the converter raises many types; a model it cannot take keeps its opset
        return model, None
    return converted, opset


def gzip_size(model: onnx.ModelProto | bytes) -> int:
    """Bytes of the serialized model after gzip -9: what a compressed download or OTA chunk stream costs."""
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return len(gzip.compress(data, compresslevel=9, mtime=0))


def _line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:300] if lines else type(e).__name__
