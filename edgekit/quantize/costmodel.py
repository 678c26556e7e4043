"""What a float/int8 split of the layers costs, from profiles, and the split that costs least.

The model: a unit costs ``float_us`` or ``int8_us`` depending on its label; a tensor between units
costs a QuantizeLinear (plus layout glue) when float feeds int8, a DequantizeLinear when int8 feeds
float, once per tensor whatever the number of readers. Every number is measured where it can be
(the float and whole-int8 profiles, then each mixed model's); a border never seen is priced per
element at the median rate of the borders that were seen.

Minimizing that total is a minimum s-t cut (each term depends on at most two labels and only
penalizes them differing), so :func:`best_split` finds the exact optimum of the model, not a greedy
guess. For each edge ``e`` with producer ``p`` and readers ``c``: an auxiliary ``z_e`` ("an int8
copy exists": every int8 reader forces it, it costs a Quantize if ``p`` is float) and ``w_e`` ("a
float copy exists": every float reader forces it, it costs a Dequantize if ``p`` is int8).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from edgekit.quantize.graph import Edge, FloatGraph
from edgekit.quantize.mincut import INF, min_cut
from edgekit.quantize.nodemap import Costs

__all__ = ["CostModel", "best_split"]

#: µs per element of a float→int8 border (QuantizeLinear + NCHW→NHWC Transpose) and int8→float, and µs per glue kernel
#: launch, until a profile shows better: measured on an AVX2 x86 with onnxruntime 1.32
DEFAULT_Q_RATE = 0.0008
DEFAULT_DQ_RATE = 0.0006
BORDER_OVERHEAD_US = 2.0
#: the default rate counts as this many elements' worth of observations
PRIOR_ELEMS = 200_000


@dataclass
class CostModel:
    """Measured costs, updated by each profile (:meth:`observe`); priced splits (:meth:`predict`)."""

    graph: FloatGraph
    float_us: dict[str, list[float]] = field(default_factory=dict)
    int8_us: dict[str, list[float]] = field(default_factory=dict)
    q_us: dict[str, list[float]] = field(default_factory=dict)
    dq_us: dict[str, list[float]] = field(default_factory=dict)

    def observe(self, int8_units: frozenset[str], costs: Costs) -> None:
        """Learn from the profile of a model whose ``int8_units`` were quantized."""
        g = self.graph
        unit = {u: costs.unit_us.get(u, 0.0) for u in g.units}
        for e in g.edges.values():
            glue = costs.edge_us.get(e.tensor, 0.0)
            border = _border(e, int8_units)
            if border == "q":
                self.q_us.setdefault(e.tensor, []).append(glue)
            elif border == "dq":
                self.dq_us.setdefault(e.tensor, []).append(glue)
            elif e.producer is not None:  # glue inside one domain (an NCHWc reorder, an NHWC transpose): the producer's
                unit[e.producer] += glue
            elif e.consumers:  # on a graph input: shared by its readers
                for c in e.consumers:
                    unit[c] += glue / len(e.consumers)
        for u, us in unit.items():
            (self.int8_us if u in int8_units else self.float_us).setdefault(u, []).append(us)

    def unit_cost(self, unit: str, int8: bool) -> float:
        seen = (self.int8_us if int8 else self.float_us).get(unit)
        if seen:
            return statistics.fmean(seen)
        return self.unit_cost(unit, False) if int8 and self.float_us.get(unit) else 0.0

    def border_cost(self, edge: Edge, kind: str) -> float:
        seen = (self.q_us if kind == "q" else self.dq_us).get(edge.tensor)
        if seen:
            return statistics.fmean(seen)
        return BORDER_OVERHEAD_US + edge.elems * self.rate(kind)

    def rate(self, kind: str) -> float:
        """µs per element of the borders of this kind seen so far, pooled with the default as a prior.

        Pooled, not a median of ratios, and shrunk toward the default: the borders seen first are often
        tiny squeeze-excitation tensors, whose cost is launch overhead, not a per-element rate.
        """
        seen = self.q_us if kind == "q" else self.dq_us
        default = DEFAULT_Q_RATE if kind == "q" else DEFAULT_DQ_RATE
        elems = sum(self.graph.edges[t].elems for t in seen)
        excess = sum(max(0.0, statistics.fmean(v) - BORDER_OVERHEAD_US) for v in seen.values())
        return (excess + default * PRIOR_ELEMS) / (elems + PRIOR_ELEMS)

    def predict(self, int8_units: frozenset[str]) -> float:
        """µs per run of the model with ``int8_units`` quantized, by this model."""
        total = sum(self.unit_cost(u, u in int8_units) for u in self.graph.units)
        for e in self.graph.edges.values():
            border = _border(e, int8_units)
            if border:
                total += self.border_cost(e, border)
        return total

    def gains(self) -> dict[str, float]:
        """Per unit: µs saved by running it in int8, borders aside (negative: int8 is slower)."""
        return {u: self.unit_cost(u, False) - self.unit_cost(u, True) for u in self.graph.units}


def _border(e: Edge, int8_units: frozenset[str]) -> str | None:
    """"q" when a float producer feeds an int8 reader, "dq" when an int8 producer feeds a float reader or the output."""
    src_int8 = e.producer is not None and e.producer in int8_units
    readers = [c in int8_units for c in e.consumers]
    if not src_int8 and any(readers):
        return "q"
    if src_int8 and (e.to_output or not all(readers)):
        return "dq"
    return None


def best_split(model: CostModel, allowed: list[str]) -> tuple[frozenset[str], float]:
    """The units to quantize (among ``allowed``; the rest stay float) that minimize ``model``'s total, and that total."""
    g = model.graph
    s, t = ("s",), ("t",)
    allowed_set = set(allowed)
    edges: list[tuple[object, object, float]] = []
    for u in g.units:
        if u in allowed_set:
            edges.append((s, u, model.unit_cost(u, True)))  # cut when u is int8 (on the sink's side)
            edges.append((u, t, model.unit_cost(u, False)))  # cut when u is float
        else:
            edges.append((s, u, INF))
    for e in g.edges.values():
        z, w = ("z", e.tensor), ("w", e.tensor)
        src = e.producer if e.producer is not None else s
        edges.append((src, z, model.border_cost(e, "q")))
        edges.append((w, src, model.border_cost(e, "dq")))
        for c in e.consumers:
            edges.append((z, c, INF))  # an int8 reader needs the int8 copy
            edges.append((c, w, INF))  # a float reader needs the float copy
        if e.to_output:
            edges.append((s, w, INF))
    _, float_side = min_cut(edges, s, t)
    chosen = frozenset(u for u in allowed if u not in float_side)
    return chosen, model.predict(chosen)
