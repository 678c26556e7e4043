"""Latency-aware mixed precision: which layers to run in int8, found by measuring, for one artifact form.

int8 pays off per layer, not per model: on an x86 CPU without VNNI a 3x3 conv runs ~4x faster in
int8, a depthwise conv or a HardSwish block slower, and every float/int8 border costs a
Quantize/Dequantize and a layout change. So, for the ``.onnx`` and for the ``.ort`` (each is
judged as it ships; an ``.ort`` has no x86 blocked-layout float kernels, so its float layers cost
more and more of it pays off in int8):

1. profile the float model and the whole-int8 model (onnxruntime's profiler, round-robin);
2. place every kernel on a layer or on a tensor between layers (:mod:`edgekit.quantize.nodemap`),
   giving each layer's float and int8 cost and each border's cost (:mod:`edgekit.quantize.costmodel`);
3. solve for the cheapest split (a minimum cut: exact for the model), build it, profile it with
   the float model again (its numbers rescale the new profile to the first one's CPU load), learn
   the borders that moved, and solve again, until a split repeats;
4. price region-level splits a person would try (1x1 convs only, all but depthwise, all but
   SE/HardSwish, ...) with the same costs.

The splits found are *candidates*: the search verifies them end to end in plain sessions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.quantize.costmodel import CostModel, best_split
from edgekit.quantize.graph import FloatGraph, regions
from edgekit.quantize.nodemap import Costs, map_profile
from edgekit.quantize.profiler import ProfileTarget, profile

__all__ = ["NO_INT8_KERNEL", "FormSearch", "Split", "explain", "search_form"]

#: profiled runs per model per round (after warm-up); kernels are summarized by their 25th percentile, which a
#: busy CPU's interruptions move least
PROFILE_RUNS = 24
MAX_ITERATIONS = 4


@dataclass(frozen=True)
class Split:
    """A float/int8 split of the layers: its name, the int8 units, what the cost model predicts (µs of kernels per run)."""

    name: str
    units: frozenset[str]
    predicted_us: float


@dataclass
class FormSearch:
    """What the search learned for one form (``onnx`` or ``ort``)."""

    form: str
    model: CostModel
    float_us: float  # the float model's placed kernels, µs per run (what every prediction is a share of)
    splits: list[Split] = field(default_factory=list)  # cost-model optimum first, then the regions
    iterations: list[dict[str, Any]] = field(default_factory=list)

    def best(self) -> Split:
        return min(self.splits, key=lambda s: s.predicted_us)

    def to_dict(self) -> dict[str, Any]:
        return {
            "float_kernel_us": round(self.float_us, 1),
            "iterations": self.iterations,
            "splits": [{"name": s.name, "int8_layers": len(s.units), "predicted_kernel_us": round(s.predicted_us, 1),
                        "predicted_ratio": round(s.predicted_us / self.float_us, 4) if self.float_us else None} for s in self.splits],
        }


@dataclass(frozen=True)
class FormTools:
    """How to get a file of this form: the float model's, and a split's (built once, cached by the caller)."""

    float_target: ProfileTarget
    target_for: Callable[[frozenset[str]], ProfileTarget]


def search_form(form: str, graph: FloatGraph, allowed: list[str], tools: FormTools, feeds: dict[str, np.ndarray], *,
                threads: int, deadline: float, workdir: Path) -> FormSearch:
    """Profile, learn, split and re-profile for one form until the split repeats or ``deadline`` (time.monotonic) passes."""
    whole = frozenset(allowed)
    first = _profile(graph, tools, whole, {}, feeds, threads, workdir)
    model = CostModel(graph)
    model.observe(frozenset(), first["float"])
    model.observe(whole, first["whole"])
    # the scale of predictions: what the cost model places of the float model (unplaced kernels are the same in every split)
    found = FormSearch(form, model, model.predict(frozenset()))
    found.iterations.append(_iteration("whole model int8", whole, model, first["whole"]))
    tried = {whole}
    for i in range(MAX_ITERATIONS):
        units, predicted = best_split(model, allowed)
        # the first split is re-profiled whatever the clock says: its prediction rests on borders never measured
        if units in tried or not units or (i and time.monotonic() > deadline):
            break
        tried.add(units)
        batch = _profile(graph, tools, whole, {"split": tools.target_for(units)}, feeds, threads, workdir)
        # the CPU's load changes between batches: bring each domain's numbers back to the first batch's scale
        k_float = first["float"].kernel_us / max(batch["float"].kernel_us, 1e-9)
        k_int8 = first["whole"].kernel_us / max(batch["whole"].kernel_us, 1e-9)
        measured = _scaled(batch["split"], units, k_float, k_int8)
        model.observe(units, measured)
        model.observe(frozenset(), _scaled(batch["float"], frozenset(), k_float, k_int8))
        model.observe(whole, _scaled(batch["whole"], whole, k_float, k_int8))
        found.iterations.append(_iteration(f"cost-model split {i + 1}", units, model, measured, predicted=predicted,
                                           scale=(k_float + k_int8) / 2))
    final, predicted = best_split(model, allowed)
    found.splits.append(Split("cost model", final, predicted))
    for name, units in regions(graph, frozenset(u for u in graph.units if u not in allowed)).items():
        if units != final:
            found.splits.append(Split(name, units, model.predict(units)))
    return found


def _profile(graph: FloatGraph, tools: FormTools, whole: frozenset[str], others: dict[str, ProfileTarget], feeds: dict[str, np.ndarray],
             threads: int, workdir: Path) -> dict[str, Costs]:
    """Profile the float and the whole-int8 model with ``others``, round-robin; each profile in the float model's terms."""
    targets = {"float": tools.float_target, "whole": tools.target_for(whole), **others}
    profiles = profile(targets, feeds, threads=threads, runs=PROFILE_RUNS, workdir=workdir / "profiles")
    return {k: map_profile(graph, p) for k, p in profiles.items()}


def _scaled(c: Costs, int8_units: frozenset[str], k_float: float, k_int8: float) -> Costs:
    """``c`` with its float units' times × ``k_float``, its int8 units' × ``k_int8``, its borders' × their mean."""
    k_edge = (k_float + k_int8) / 2
    return Costs({u: v * (k_int8 if u in int8_units else k_float) for u, v in c.unit_us.items()}, c.int8_units,
                 {t: v * k_edge for t, v in c.edge_us.items()}, c.unmapped_us * k_edge, c.run_us * k_edge)


def _iteration(label: str, units: frozenset[str], model: CostModel, measured: Costs, *, predicted: float | None = None,
               scale: float = 1.0) -> dict[str, Any]:
    return {
        "split": label, "int8_layers": len(units), "measured_kernel_us": round(measured.kernel_us, 1),
        **({"predicted_kernel_us": round(predicted, 1)} if predicted is not None else {}),
        "unplaced_us": round(measured.unmapped_us, 1), "load_scale": round(scale, 3),
    }


#: why a layer with weights stays float in every candidate, the whole-int8 ones too
NO_INT8_KERNEL = "no int8 kernel in onnxruntime"


def explain(graph: FloatGraph, model: CostModel, units: frozenset[str], *, excluded: frozenset[str],
            too_lossy: dict[str, float]) -> list[dict[str, Any]]:
    """Each layer with weights or an int8 kernel that stays float in ``units``' split, and why, with its measured costs."""
    out = []
    for u in graph.units.values():
        if u.name in units or not (u.quantizable or u.weight_elems):
            continue
        f, q = model.unit_cost(u.name, False), model.unit_cost(u.name, True)
        if u.name in excluded:
            why = "--exclude"
        elif u.name in too_lossy:
            why = f"too much error in int8 (adds {too_lossy[u.name]:.3g} relative error, the most of the layers tried)"
        elif not u.quantizable:
            why = NO_INT8_KERNEL
        elif q >= f:
            why = f"slower in int8 ({q:.0f} vs {f:.0f} µs)"
        else:
            why = f"faster alone in int8 ({q:.0f} vs {f:.0f} µs), but the float/int8 borders it would add cost more"
        out.append({"layer": u.name, "op": u.op_type, "kind": u.kind, "why": why, "float_us": round(f, 1), "int8_us": round(q, 1)})
    return out
