"""The float model as the mixed-precision search sees it: units, the tensors between them, named regions.

A *unit* is what is quantized or left float as one: a node and the activations that run fused with
it (Conv + Relu, Conv + HardSigmoid + Mul = HardSwish, Conv + Sigmoid + Mul = SiLU). onnxruntime
fuses those in float and in int8 alike, so splitting them would only add a border where none runs.
An *edge* is a tensor one unit produces and others read: where a float/int8 border costs a
QuantizeLinear or DequantizeLinear (and a layout change) when the two sides differ.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx

__all__ = ["Edge", "FloatGraph", "Unit", "float_graph", "name_nodes", "regions"]

#: elementwise activations onnxruntime fuses into the op before them (float FusedConv, QLinearConv's clipping)
ACTIVATIONS = frozenset({"Relu", "Clip", "LeakyRelu", "HardSigmoid", "HardSwish", "Sigmoid", "Tanh", "Elu", "Selu", "Softplus",
                         "Gelu", "PRelu"})
_GATES = frozenset({"HardSigmoid", "HardSwish", "Sigmoid"})


@dataclass(frozen=True)
class Unit:
    """One decision: its head node's name (what ``--exclude`` takes), its nodes, what kind of layer it is."""

    name: str
    op_type: str
    nodes: tuple[str, ...]
    kind: str  # conv1x1 | depthwise | conv | linear | other
    quantizable: bool  # onnxruntime's quantizer has an int8 form for the head op
    weight_elems: int
    gated: bool = False  # holds a HardSigmoid/HardSwish/Sigmoid, or is part of a squeeze-excitation block


@dataclass(frozen=True)
class Edge:
    """A tensor between units: its producer (None: a graph input), the other units that read it, its size at batch 1."""

    tensor: str
    producer: str | None
    consumers: tuple[str, ...]
    to_output: bool
    elems: int


@dataclass(frozen=True)
class FloatGraph:
    units: dict[str, Unit]
    unit_of: dict[str, str]  # node name -> unit name
    edges: dict[str, Edge]  # tensor name -> edge (only tensors that cross units or leave the graph)
    producer: dict[str, str]  # tensor name -> node name
    elems: dict[str, int]  # tensor name -> elements at batch 1 (0: unknown)

    def labelable(self, exclude: frozenset[str] = frozenset()) -> list[str]:
        """Units the search may quantize: quantizable and not excluded (by unit name or any of its nodes)."""
        return [u.name for u in self.units.values() if u.quantizable and not (exclude & {u.name, *u.nodes})]

    def nodes_of(self, units: frozenset[str] | set[str]) -> list[str]:
        """The node names of ``units``, in graph order: what ``quantize_static(nodes_to_quantize=...)`` takes."""
        return [n for n, u in self.unit_of.items() if u in units]


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy where every node of the main graph has a unique name.

    ``quant_pre_process`` inlines functions (HardSwish → HardSigmoid + Mul) into unnamed nodes, and
    onnxruntime's profiler then reports them as ``<op>_<index>``, which nothing maps back. Naming them
    after their output (``.../HardSwish_output_0`` → ``.../HardSwish``) keeps them recognisable.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    taken = {n.name for n in out.graph.node if n.name}
    kept: set[str] = set()
    for i, n in enumerate(out.graph.node):
        if n.name and n.name not in kept:  # the first node of a name keeps it; a duplicate is renamed like a nameless one
            kept.add(n.name)
            continue
        base = n.output[0].removesuffix("_output_0") if n.output and n.output[0] else f"{n.op_type}_{i}"
        name, k = (base if base not in taken else f"{base}/{n.op_type}"), 1
        while name in taken:
            name, k = f"{base}/{n.op_type}_{k}", k + 1
        n.name = name
        taken.add(name)
        kept.add(name)
    return out


def float_graph(model: onnx.ModelProto, quantizable_ops: frozenset[str]) -> FloatGraph:
    """Units and edges of ``model``'s main graph (nodes named, see :func:`name_nodes`)."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n.name for n in g.node for o in n.output if o}
    nodes = {n.name: n for n in g.node}
    unit_of = _group(g, inits, producer)
    members: dict[str, list[str]] = {}
    for node, unit in unit_of.items():
        members.setdefault(unit, []).append(node)
    se = _squeeze_excitation(g, unit_of, producer, inits)
    units = {}
    for name, names in members.items():
        head = nodes[name]
        w = inits.get(head.input[1]) if len(head.input) > 1 else None
        gated = name in se or any(nodes[n].op_type in _GATES for n in names)
        units[name] = Unit(name, head.op_type, tuple(names), _kind(head, w), head.op_type in quantizable_ops,
                           int(np.prod(w.dims)) if w is not None else 0, gated)
    elems = _elems(model)
    return FloatGraph(units, unit_of, _edges(g, unit_of, producer, inits, elems), producer, elems)


def _group(g: onnx.GraphProto, inits: dict[str, onnx.TensorProto], producer: dict[str, str]) -> dict[str, str]:
    """node → unit: an activation whose every non-constant input comes from one unit joins that unit."""
    unit_of: dict[str, str] = {}
    outputs = {o.name for o in g.output}
    for n in g.node:
        sources = {unit_of[producer[i]] for i in n.input if i and i not in inits and i in producer}
        from_inputs = any(i and i not in inits and i not in producer for i in n.input)
        fusable = n.op_type in ACTIVATIONS or (n.op_type == "Mul" and len(sources) == 1)
        if fusable and len(sources) == 1 and not from_inputs and not any(i in outputs for i in n.input):
            unit_of[n.name] = next(iter(sources))
        else:
            unit_of[n.name] = n.name
    # SpaceToDepth feeding only a conv is edgekit's int8 stem rewrite (edgekit.onnx_rewrites): one layer with its conv
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    for n in g.node:
        after = readers.get(n.output[0], []) if n.output else []
        if n.op_type == "SpaceToDepth" and len(after) == 1 and after[0].op_type == "Conv" and unit_of[n.name] == n.name:
            unit_of[n.name] = unit_of[after[0].name]
    return unit_of


def _kind(node: onnx.NodeProto, w: onnx.TensorProto | None) -> str:
    if node.op_type in ("Gemm", "MatMul"):
        return "linear"
    if node.op_type != "Conv" or w is None:
        return "other"
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    if group > 1:
        return "depthwise"
    return "conv1x1" if list(w.dims[2:]) in ([1, 1], [1]) else "conv"


def _squeeze_excitation(g: onnx.GraphProto, unit_of: dict[str, str], producer: dict[str, str],
                        inits: dict[str, onnx.TensorProto]) -> set[str]:
    """Units of squeeze-excitation blocks: Mul(x, gate(...GlobalAveragePool(x)...)) and every unit on the gate's path."""
    nodes = {n.name: n for n in g.node}
    found: set[str] = set()
    for n in g.node:
        if n.op_type != "Mul" or len([i for i in n.input if i not in inits]) != 2:
            continue
        for x, gate in ((n.input[0], n.input[1]), (n.input[1], n.input[0])):
            path, frontier = [], [gate]
            for _ in range(12):  # an SE gate is a handful of layers deep
                src = producer.get(frontier[0]) if frontier else None
                if src is None:
                    break
                path.append(src)
                node = nodes[src]
                if node.op_type in ("GlobalAveragePool", "ReduceMean") and node.input[0] == x:
                    found.update(unit_of[p] for p in path)
                    found.add(unit_of[n.name])
                    break
                frontier = [i for i in node.input if i and i not in inits][:1]
    return found


def _elems(model: onnx.ModelProto) -> dict[str, int]:
    """Elements of each typed tensor at batch 1 (symbolic dims count as 1); inferred when the model carries no shapes."""
    g = model.graph
    if len(g.value_info) < len(g.node) // 2:
        try:
            g = onnx.shape_inference.infer_shapes(model).graph
        except Exception:  # noqa: BLE001 - without shapes, borders are costed from what the profiler shows
            pass
    out = {}
    for v in list(g.input) + list(g.value_info) + list(g.output):
        dims = v.type.tensor_type.shape.dim
        if v.type.tensor_type.HasField("shape"):
            out[v.name] = int(np.prod([d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in dims]))
    return out


def _edges(g: onnx.GraphProto, unit_of: dict[str, str], producer: dict[str, str], inits: dict[str, onnx.TensorProto],
           elems: dict[str, int]) -> dict[str, Edge]:
    consumers: dict[str, list[str]] = {}
    for n in g.node:
        for i in n.input:
            if i and i not in inits:
                consumers.setdefault(i, []).append(unit_of[n.name])
    outputs = {o.name for o in g.output}
    edges = {}
    for t in set(consumers) | outputs:
        src = unit_of[producer[t]] if t in producer else None
        readers = tuple(dict.fromkeys(c for c in consumers.get(t, []) if c != src))
        if readers or t in outputs:
            edges[t] = Edge(t, src, readers, t in outputs, elems.get(t, 0))
    return edges


def regions(graph: FloatGraph, exclude: frozenset[str] = frozenset()) -> dict[str, frozenset[str]]:
    """Region-level choices, named as a person would: the units each one quantizes (empty or duplicate ones dropped)."""
    allowed = graph.labelable(exclude)
    units = graph.units
    rules: dict[str, Callable[[Unit], bool]] = {
        "all layers": lambda u: True,
        "1x1 convs only": lambda u: u.kind == "conv1x1",
        "convs and linear layers only": lambda u: u.kind in ("conv1x1", "conv", "depthwise", "linear"),
        "all but depthwise convs": lambda u: u.kind != "depthwise",
        "all but SE/HardSwish": lambda u: not u.gated,
        "linear layers only": lambda u: u.kind == "linear",
    }
    out: dict[str, frozenset[str]] = {}
    for name, rule in rules.items():
        chosen = frozenset(u for u in allowed if rule(units[u]))
        if chosen and chosen not in out.values():
            out[name] = chosen
    return out
