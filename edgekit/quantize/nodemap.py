"""Profile events placed back on the float model: what each unit costs, what each tensor's glue costs.

onnxruntime renames what it rewrites, so an event is placed by these rules, in order:

- the float model's own node name (a float kernel, a ``QLinearAdd`` that kept the ``Add``'s name);
- ``<node>_token_<n>``: a node made by a fusion (``QLinearConv`` from ``DequantizeLinear → Conv → QuantizeLinear``);
- ``<node>/<Fusion>/``: a fusion named under its first node (``.../Mul/QuickGeluFusion/``: SiLU);
- ``<tensor>_nchwc``: x86's blocked-layout float conv, named after the tensor it computes
  (with a fused activation, the activation's output: the unit holds both);
- an output tensor of the float model: the node that computes it;
- glue (``QuantizeLinear``, ``DequantizeLinear``, ``Transpose``, ``ReorderInput``/``ReorderOutput``,
  ``Cast``) belongs to a *tensor*: ``<tensor>_QuantizeLinear`` / ``_DequantizeLinear`` by name,
  otherwise the float tensor reached by walking the run graph upstream through other glue
  (the ``Transpose`` after ``x_QuantizeLinear`` is on ``x``).

Glue on a tensor inside one unit (HardSwish's DequantizeLinear → HardSigmoid → QuantizeLinear) is
the unit's own cost. What no rule places is counted, not guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgekit.quantize.graph import FloatGraph
from edgekit.quantize.profiler import Profile, RunNode

__all__ = ["GLUE", "Costs", "map_profile", "owner"]

GLUE = frozenset({"QuantizeLinear", "DequantizeLinear", "Transpose", "ReorderInput", "ReorderOutput", "Cast", "DynamicQuantizeLinear"})
_TOKEN = re.compile(r"^(.*?)(?:_token_\d+)+$")
_GLUE_NAME = re.compile(r"^(.*)_(?:QuantizeLinear|DequantizeLinear)(?:_token_\d+)*$")


@dataclass(frozen=True)
class Costs:
    """One profile in the float model's terms (µs per run)."""

    unit_us: dict[str, float]  # unit -> its kernels (and the glue inside it)
    int8_units: frozenset[str]  # units that ran on 8-bit data
    edge_us: dict[str, float]  # edge tensor -> quantize/dequantize/layout glue on it
    unmapped_us: float
    run_us: float

    @property
    def kernel_us(self) -> float:
        return sum(self.unit_us.values()) + sum(self.edge_us.values()) + self.unmapped_us


def owner(name: str, outputs: tuple[str, ...], graph: FloatGraph) -> str | None:
    """The float-model node a compute event's node stands for, by the naming rules above (None: no rule applies)."""
    if name in graph.unit_of:
        return name
    m = _TOKEN.match(name)
    if m and m.group(1) in graph.unit_of:
        return m.group(1)
    base = name
    for _ in range(3):  # a fusion named under its first node: ".../Mul/QuickGeluFusion/" is SiLU's Sigmoid + Mul
        base = base.rstrip("/").rpartition("/")[0]
        if base in graph.unit_of:
            return base
    if name.endswith("_nchwc") and name[: -len("_nchwc")] in graph.producer:
        return graph.producer[name[: -len("_nchwc")]]
    for o in outputs:
        t = o.removesuffix("_nchwc")
        if t in graph.producer:
            return graph.producer[t]
    return None


def map_profile(graph: FloatGraph, prof: Profile) -> Costs:
    """Place every event of ``prof`` on a unit or an edge of ``graph``."""
    unit_us: dict[str, float] = {}
    edge_us: dict[str, float] = {}
    int8: set[str] = set()
    unmapped = 0.0
    producers = {o: n for n in prof.graph.values() for o in n.outputs}
    for name, us in prof.kernel_us.items():
        node = prof.graph.get(name)
        op = node.op_type if node else prof.op_types.get(name, "")
        if op in GLUE and name not in graph.unit_of:
            t = _glue_tensor(name, node, producers, graph)
            if t is None:
                unmapped += us
            elif t in graph.edges:
                edge_us[t] = edge_us.get(t, 0.0) + us
            elif t in graph.producer:  # a tensor inside one unit: the unit's own cost
                u = graph.unit_of[graph.producer[t]]
                unit_us[u] = unit_us.get(u, 0.0) + us
            else:
                unmapped += us
            continue
        src = owner(name, node.outputs if node else (), graph)
        if src is None:
            unmapped += us
            continue
        u = graph.unit_of[src]
        unit_us[u] = unit_us.get(u, 0.0) + us
        if name in prof.eight_bit:
            int8.add(u)
    return Costs(unit_us, frozenset(int8), edge_us, unmapped, prof.run_us)


def _glue_tensor(name: str, node: RunNode | None, producers: dict[str, RunNode], graph: FloatGraph) -> str | None:
    """The float tensor a glue node sits on: by its name, else upstream through other glue to a float tensor or unit."""
    m = _GLUE_NAME.match(name)
    if m and (m.group(1) in graph.elems or m.group(1) in graph.producer or m.group(1) in graph.edges):
        return m.group(1)
    seen = 0
    while node is not None and seen < 16:
        seen += 1
        data = node.inputs[0] if node.inputs else ""
        if data in graph.edges or data in graph.producer:
            return data
        up = producers.get(data)
        if up is None:
            return None
        if up.op_type in GLUE and up.name not in graph.unit_of:
            m = _GLUE_NAME.match(up.name)
            if m and m.group(1) in graph.edges:
                return m.group(1)
            node = up
            continue
        src = owner(up.name, up.outputs, graph)
        return _unit_output(graph, graph.unit_of[src]) if src is not None else None
    return None


def _unit_output(graph: FloatGraph, unit: str) -> str | None:
    """The tensor a unit hands to other units (its first edge)."""
    return next((e.tensor for e in graph.edges.values() if e.producer == unit), None)
