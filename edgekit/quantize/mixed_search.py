"""The mixed candidates of one int8 search: splits found per form, built, checked, and made accurate.

Runs after the whole-model static candidate (which calibrated the ranges every split reuses):
:func:`edgekit.quantize.mixed.search_form` for the ``.onnx`` and the ``.ort``, then each form's
cost-model split and its best region-level split become candidates. A candidate that misses the
accuracy bound gives its layers with the largest int8 error back to float (1, 2, 4, ... of them,
ranked by :func:`edgekit.quantize.layers.layer_errors` on the whole-int8 model) and the split is
solved again without them, until it meets the bound or the time is spent.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from edgekit.evaluate import one_sample
from edgekit.quantize.candidates import Candidate, Kind
from edgekit.quantize.costmodel import CostModel, best_split
from edgekit.quantize.graph import FloatGraph, float_graph
from edgekit.quantize.mixed import FormSearch, FormTools, explain, search_form
from edgekit.quantize.outcome import CandidateResult
from edgekit.quantize.profiler import ProfileTarget

if TYPE_CHECKING:
    from edgekit.quantize.search import Workbench

__all__ = ["mixed_candidates", "quantizable_ops"]

#: shares of the search's time budget: profiling splits until the first, checking the finalists until the second
SEARCH_SHARE = 0.55
FINALISTS_SHARE = 0.75
#: the best region-level split is checked end to end when its predicted time is within this factor of the cost model's split
REGION_MARGIN = 1.1


def quantizable_ops() -> frozenset[str]:
    """Op types onnxruntime's static quantizer has an int8 form for (QDQ and QOperator registries)."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return frozenset(QDQRegistry) | frozenset(QLinearOpsRegistry)


@dataclass
class _Splits:
    """The float graph the splits are over, and each split's built .onnx (built once, shared by both forms)."""

    bench: Workbench
    graph: FloatGraph
    stem: frozenset[str]  # units holding the SpaceToDepth stem rewrite: only in the static source
    built: dict[frozenset[str], Path]

    def candidate(self, name: str, units: frozenset[str], label: str) -> Candidate:
        return Candidate(name, Kind.STATIC, "QDQ", "u8", True, nodes=tuple(self.graph.nodes_of(units)),
                         note=f"static int8 on {len(units)} of {len(self.graph.units)} layers ({label}), the rest float")

    def source(self, units: frozenset[str]) -> Path:
        """A split with its stem in float quantizes the original graph: the rewritten stem is only faster in int8."""
        return self.bench.static_path if units & self.stem else self.bench.fp32_path

    def onnx_for(self, units: frozenset[str]) -> Path:
        if units not in self.built:
            name = f"split-{len(self.built)}"
            self.built[units] = self.bench.build(self.candidate(name, units, name), self.source(units))
        return self.built[units]

    def tools(self, form: str) -> FormTools:
        bench = self.bench
        if form == "onnx":
            return FormTools(ProfileTarget(bench.fp32_path), lambda u: ProfileTarget(self.onnx_for(u)))

        def ort_target(units: frozenset[str]) -> ProfileTarget:
            p = self.onnx_for(units)
            return ProfileTarget(bench.ort_of(p), p)

        return FormTools(ProfileTarget(bench.ort_of(bench.fp32_path), bench.fp32_path), ort_target)


def mixed_candidates(bench: Workbench, whole: CandidateResult) -> tuple[list[CandidateResult], dict[str, Any]]:
    """Search splits for each form, then build and check the finalists; returns them and the search's record."""
    settings = bench.settings
    graph = float_graph(onnx.load(str(bench.static_path)), quantizable_ops())
    excluded = frozenset(u.name for u in graph.units.values() if set(settings.exclude) & {u.name, *u.nodes})
    allowed = graph.labelable(frozenset(settings.exclude))
    stem = frozenset(graph.unit_of[n.name] for n in onnx.load(str(bench.static_path)).graph.node if n.op_type == "SpaceToDepth")
    splits = _Splits(bench, graph, stem, {frozenset(allowed): whole.path or bench.build(whole.candidate)})
    forms = ["onnx", "ort"] if settings.ort else ["onnx"]
    feeds = one_sample(bench.ref.eval_data, bench.ref.inputs)
    found: dict[str, FormSearch] = {}
    start, end = time.monotonic(), bench.deadline(SEARCH_SHARE)
    for k, form in enumerate(forms):
        bench.progress(f"int8: per-layer costs as .{form} (onnxruntime profiler)", 0.3 + 0.3 * k / len(forms))
        try:
            found[form] = search_form(form, graph, allowed, splits.tools(form), feeds, threads=settings.threads,
                                      deadline=start + (end - start) * (k + 1) / len(forms), workdir=bench.workdir)
        except Exception as e:  # noqa: BLE001 - the whole-model candidates still stand without a per-layer search
            bench.progress(f"int8: per-layer search as .{form} failed ({_line(e)})", 0.6)
    results = _finalists(splits, found, allowed, excluded, whole)
    record: dict[str, Any] = {form: fs.to_dict() for form, fs in found.items()}
    return results, record


def _finalists(splits: _Splits, found: dict[str, FormSearch], allowed: list[str], excluded: frozenset[str],
               whole: CandidateResult) -> list[CandidateResult]:
    """Each form's cost-model split and best region split, built and checked (an inaccurate one made accurate)."""
    bench = splits.bench
    wanted: dict[frozenset[str], tuple[str, str, str]] = {}  # units -> (name, label, form)
    for form, fs in found.items():
        model_split, regions = fs.splits[0], fs.splits[1:]
        picks = [(model_split, f"mixed-{form}", f"cost model, .{form}")]
        best_region = min(regions, key=lambda s: s.predicted_us) if regions else None
        # a region a person would try is checked end to end when the costs say it is close: a check on the cost model
        if best_region is not None and best_region.predicted_us <= REGION_MARGIN * model_split.predicted_us:
            picks.append((best_region, f"mixed-{_slug(best_region.name)}", best_region.name))
        for s, name, label in picks:
            if s.units and s.units != frozenset(allowed) and s.units not in wanted:
                wanted[s.units] = (name, label, form)
    out: list[CandidateResult] = []
    errors: dict[str, float] | None = None
    for i, (units, (name, label, form)) in enumerate(wanted.items()):
        bench.progress(f"int8: checking mixed candidate {name} ({len(units)} int8 layers)", 0.6 + 0.25 * i / len(wanted))
        if bench.elapsed() > FINALISTS_SHARE * bench.settings.time_budget_s:
            out.append(CandidateResult(splits.candidate(name, units, label), "skipped", "search time budget spent", split=label))
            continue
        splits.onnx_for(units)
        r = _check_built(splits, name, units, label)
        lossy: dict[str, float] = {}
        if r.status == "ok" and not r.accepted:
            errors = errors if errors is not None else _unit_errors(bench, splits.graph, whole)
            r, units, lossy = _make_accurate(splits, found[form].model, allowed, r, units, errors, (name, label))
        if r.status == "ok":
            r.float_layers = explain(splits.graph, found[form].model, units, excluded=excluded, too_lossy=lossy)
            r.int8_layers = [u for u in splits.graph.units if u in units]
        out.append(r)
    return out


def _check_built(splits: _Splits, name: str, units: frozenset[str], label: str) -> CandidateResult:
    cand = splits.candidate(name, units, label)
    bench, built = splits.bench, splits.built[units]
    target = bench.workdir / f"{name}.onnx"
    if not target.is_file():
        target.write_bytes(built.read_bytes())
        if built in bench.ort_files:  # converted while profiling as .ort: the same model
            bench.ort_files[target] = bench.ort_files[built]
    return bench.check(cand, split=label)


def _make_accurate(splits: _Splits, model: CostModel, allowed: list[str], r: CandidateResult, units: frozenset[str],
                   errors: dict[str, float], named: tuple[str, str]) -> tuple[CandidateResult, frozenset[str], dict[str, float]]:
    """Give the split's most lossy layers back to float (1, 2, 4, ...) and solve again, until it meets the bound."""
    name, label = named
    ranked = sorted((u for u in units if u in errors), key=lambda u: -errors[u])
    k = 1
    forced: list[str] = []
    while not r.accepted and k <= len(ranked) and splits.bench.elapsed() < FINALISTS_SHARE * splits.bench.settings.time_budget_s:
        forced = ranked[:k]
        fewer, _ = best_split(model, [u for u in allowed if u not in forced])
        if not fewer:
            break
        splits.onnx_for(fewer)
        r, units = _check_built(splits, f"{name}-{k}float", fewer, f"{label}, {k} most lossy layer(s) float"), fewer
        k *= 2
    return r, units, {u: errors[u] for u in forced}


def _unit_errors(bench: Workbench, graph: FloatGraph, whole: CandidateResult) -> dict[str, float]:
    """Per unit, the largest relative error its nodes add in the whole-int8 model (``edgekit.quantize.layers``)."""
    from edgekit.quantize.layers import layer_errors

    out: dict[str, float] = {}
    quant = whole.path or bench.build(whole.candidate)
    for e in layer_errors(bench.static_path, quant, bench.ref.eval_data, bench.ref.inputs, threads=bench.settings.threads,
                          scratch=bench.workdir):
        u = graph.unit_of.get(e.node)
        if u is not None:
            out[u] = max(out.get(u, 0.0), e.added_rel_error)
    return out


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower().replace("/", "-")).strip("-")


def _line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else type(e).__name__)[:200]
