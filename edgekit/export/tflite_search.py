"""Which ops of a full-integer int8 ``.tflite`` stay float: measured variants, never slower than float. Runs in the TF worker.

A whole-model int8 conversion can be several times *slower* than the float .tflite under LiteRT:
ops whose int8 kernels XNNPACK lacks fall back to TFLite's reference kernels (HARD_SWISH, DIV,
SQRT, ABS, AVERAGE_POOL_2D, ... in LiteRT 2.x), and where int8 does run on XNNPACK it does not always
gain (1x1 convolutions on few channels on a CPU without int8 dot products). Rewrites before the
conversion fix what has an exact int8-friendly form (:mod:`edgekit.export.tflite_prep`); the rest is
a choice of which ops to keep float, made here by measurement:

1. calibrate once, quantize the whole model, and time every op alone in float and in int8
   (:mod:`edgekit.export.tflite_opcost`): ops slower in int8, or leaving XNNPACK, are the candidates;
2. variants keep them float by op type (each slow type, all of them) and by node (every slow
   node, every node off XNNPACK); each is quantized from the same calibration (about a second),
   checked for parity with the float model on the evaluation data and timed round-robin with
   the float .tflite;
3. when the whole-model int8 is outside parity, the ops int8 represents worst (the quantization
   debugger's per-layer RMS error in output steps, well above rounding) stay float too, 1, 2, 4, ...
   of them until parity holds, else one op type at a time; every variant outside parity gets them;
4. local moves by op type around the best variant (keep one more type float, or one fewer) until
   it stops changing (at most ``MAX_ROUNDS``); the finalists are re-timed together, the objective
   picks one (:mod:`edgekit.export.tflite_select`), and its parity is confirmed on every sample.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.export.tflite_measure import Judge
from edgekit.export.tflite_opcost import OpCost, op_costs, summarize
from edgekit.export.tflite_quant import DATA_MOVEMENT, float_compute_ops, layer_errors, nodes, quantize
from edgekit.export.tflite_select import Selection, Variant, select

__all__ = ["MAX_ROUNDS", "SearchContext", "SearchOutcome", "float_layers", "search"]

#: local-move rounds after the first candidates
MAX_ROUNDS = 3
#: single op types tried on their own, the slowest in int8 first
MAX_TYPES = 3
#: finalists re-timed together before the choice
FINALISTS = 4
#: the error path keeps at most a quarter of the ops float, and at least tries this many
MIN_ERROR_OPS = 4
#: op types tried whole, one at a time, when no few ops explain the int8 error
MAX_ERROR_TYPES = 4
#: an op's int8 error (RMS, in output quantization steps) above which it is a candidate for float: rounding
#: alone gives 1/sqrt(12) = 0.29; TensorFlow's debugger guide calls 0.7 suspicious
INACCURATE_STEPS = 0.5


@dataclass
class SearchContext:
    tf: Any
    calibrated: bytes
    per_channel: bool
    int8_io: bool
    work: Path
    judge: Judge
    float_path: Path  # the float .tflite every variant is timed against
    objective: str
    samples: list[list[np.ndarray]]  # a few inputs in the model's input order, for the debugger's per-layer errors
    progress: Callable[[str, float], None] = lambda m, f: None
    blobs: dict[str, bytes] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)  # seconds per step of the search
    notes: list[str] = field(default_factory=list)  # what could not be measured
    _t: float = field(default_factory=time.perf_counter)

    def lap(self, phase: str) -> None:
        """Charge the time since the last lap to ``phase``."""
        now = time.perf_counter()
        self.phases[phase] = round(self.phases.get(phase, 0.0) + now - self._t, 1)
        self._t = now

    def build(self, name: str, deny_ops: tuple[str, ...], deny_nodes: tuple[str, ...], origin: str) -> Variant:
        """Quantize the calibrated model keeping ``deny_ops``/``deny_nodes`` float; write it under ``work``."""
        from edgekit.tf_process import WorkerError

        v = Variant(name, tuple(sorted(set(deny_ops))), tuple(sorted(set(deny_nodes))), origin=origin)
        try:
            blob = quantize(self.tf, self.calibrated, per_channel=self.per_channel, int8_io=self.int8_io,
                            deny_ops=v.deny_ops, deny_nodes=v.deny_nodes)
        except WorkerError as e:
            v.error = str(e)
            return v
        path = self.work / f"{re.sub(r'[^A-Za-z0-9]+', '_', name).strip('_')[:60] or 'variant'}.{len(self.blobs)}.tflite"
        path.write_bytes(blob)
        self.blobs[str(path)] = blob
        v.size_bytes, v.facts["path"] = len(blob), str(path)
        return v


@dataclass
class SearchOutcome:
    selection: Selection
    baseline: Variant
    variants: list[Variant]
    costs: list[OpCost]
    error_nodes: dict[str, float]  # kept float for accuracy: name -> RMS error in output steps
    rounds: int
    seconds: float

    def blob(self, ctx: SearchContext) -> bytes | None:
        """The chosen variant's bytes (None: the float .tflite was chosen)."""
        chosen = self.selection.chosen
        return None if chosen.baseline else ctx.blobs[chosen.facts["path"]]


def search(ctx: SearchContext) -> SearchOutcome:
    """Measure the variants and pick one; see the module docstring for the steps."""
    t0 = time.perf_counter()
    baseline = Variant("float .tflite", size_bytes=ctx.float_path.stat().st_size, baseline=True, origin="the float model", accurate=True)
    ctx.progress("tflite int8: timing each op in float and int8", 0.55)
    whole = ctx.build("int8", (), (), "the whole model in int8")
    if whole.error:
        raise _worker_error(whole.error)
    ctx.lap("whole-model int8")
    try:
        costs = op_costs(ctx.calibrated, ctx.blobs[whole.facts["path"]])
    except Exception as e:  # noqa: BLE001 - a model the op cutter cannot read: no per-op candidates, the whole model still competes
        costs, ctx.notes = [], [*ctx.notes, f"ops could not be timed one by one ({type(e).__name__}: {str(e)[:120]})"]
    ctx.lap("op costs")
    variants = [whole, *(ctx.build(*c) for c in _first_candidates(costs))]
    _measure(ctx, variants, baseline, "first variants", 0.6)
    ctx.lap("first variants")
    error_nodes: dict[str, float] = {}
    if not whole.accurate:
        # the ops int8 represents worst stay float in every variant that was not accurate without them
        first = list(variants)
        error_nodes, error_types = _error_path(ctx, variants, costs)
        extra = tuple(error_nodes)
        if extra or error_types:
            what = f"{len(extra)} inaccurate" if extra else "+".join(error_types)
            rebuilt = [ctx.build(f"{v.name} + float {what}", (*v.deny_ops, *error_types), v.deny_nodes + extra,
                                 v.origin + "; too much int8 error") for v in first[1:] if not v.error and not v.accurate]
            for v in rebuilt:
                v.facts.update(error_nodes=list(extra), error_types=list(error_types))
            variants += rebuilt
            _measure(ctx, variants, baseline, "variants with the inaccurate ops float", 0.7)
        ctx.lap("int8 error")
    rounds = _converge(ctx, variants, baseline, costs)
    ctx.lap("local moves")
    selection = _finals(ctx, variants, baseline)
    ctx.lap("finals")
    return SearchOutcome(selection, baseline, variants, costs, error_nodes, rounds, time.perf_counter() - t0)


def _first_candidates(costs: list[OpCost]) -> list[tuple[str, tuple[str, ...], tuple[str, ...], str]]:
    """(name, deny_ops, deny_nodes, origin) of the first variants: slow op types one by one and together, slow nodes."""
    types = _slow_types(costs)
    out: list[tuple[str, tuple[str, ...], tuple[str, ...], str]] = []
    for t in types[:MAX_TYPES]:
        out.append((f"float {t}", (t,), (), f"{t} is slower in int8"))
    if len(types) > 1:
        out.append((f"float {'+'.join(types)}", tuple(types), (), "every op type slower in int8"))
    slow = tuple(c.name for c in costs if c.slower_in_int8 and c.op not in DATA_MOVEMENT)
    off = tuple(c.name for c in costs if c.int8_xnnpack is False and c.float_xnnpack and c.op not in DATA_MOVEMENT)
    if slow:
        out.append((f"float {len(slow)} slow nodes", (), slow, "nodes slower in int8"))
    if off and set(off) != set(slow):
        out.append((f"float {len(off)} nodes off XNNPACK", (), off, "nodes XNNPACK runs in float but not in int8"))
    seen, unique = set(), []
    for c in out:
        key = (frozenset(c[1]), frozenset(c[2]))
        if key not in seen:
            seen.add(key)
            unique.append(c)
    return unique


def _slow_types(costs: list[OpCost]) -> list[str]:
    """Op types whose int8 ops take longer in total than their float twins (or leave XNNPACK), the largest excess first."""
    excess = {}
    for t, s in summarize(costs).items():
        if t in DATA_MOVEMENT:
            continue
        if s["int8_us"] > s["float_us"] * 1.1 + 2.0 or s["int8_off_xnnpack"]:
            excess[t] = s["int8_us"] - s["float_us"]
    return sorted(excess, key=lambda t: -excess[t])


def _measure(ctx: SearchContext, variants: list[Variant], baseline: Variant, what: str, at: float) -> None:
    """Screen the accuracy of each unmeasured variant; time the accurate ones round-robin with the float .tflite."""
    ctx.progress(f"tflite int8: measuring {len(variants)} {what}", at)
    for v in variants:
        if v.error or v.accurate is not None:
            continue
        v.quality, v.parity, v.accurate = ctx.judge.accuracy(Path(v.facts["path"]))
    timed = [v for v in variants if v.accurate and not v.error]
    if not timed:
        return
    p50 = ctx.judge.latency({"float": ctx.float_path, **{str(i): Path(v.facts["path"]) for i, v in enumerate(timed)}})
    for i, v in enumerate(timed):
        v.p50_ms, v.base_ms = p50[str(i)], p50["float"]
    baseline.p50_ms = baseline.base_ms = p50["float"]


def _error_path(ctx: SearchContext, variants: list[Variant], costs: list[OpCost]) -> tuple[dict[str, float], tuple[str, ...]]:
    """What, kept float, brings the int8 model within parity: (ops by name with their int8 error, op types kept float whole).

    First the fewest worst-represented ops, 1, 2, 4, ... up to a quarter of the model's, taking only ops
    whose own int8 error is well above rounding (``INACCURATE_STEPS``). When the error is spread over
    many ops instead, one op type at a time (the largest summed error first): int8 error often sits in
    one kind of op (a gating MUL, a classifier head). Nothing found: the model is better off as an
    accurate variant found by speed, or as the float .tflite.
    """
    ctx.progress("tflite int8: the int8 model is outside parity; ranking ops by int8 error", 0.65)
    if not ctx.samples:
        return {}, ()
    try:
        errs = layer_errors(ctx.tf, ctx.calibrated, ctx.samples, per_channel=ctx.per_channel)
    except Exception as e:  # noqa: BLE001 - TensorFlow's debugger on a model it cannot instrument: no ranking by error
        ctx.notes.append(f"ops could not be ranked by int8 error ({type(e).__name__}: {str(e)[:120]})")
        return {}, ()
    # an op whose own error is its output's rounding (~0.29 steps) is not the problem on its own
    ranked = [n for n in sorted(errs, key=lambda n: -errs[n]) if errs[n] >= INACCURATE_STEPS]
    limit = min(len(ranked), max(MIN_ERROR_OPS, len(errs) // 4))
    k = 1
    while ranked:
        k = min(k, limit)
        if _try_accuracy(ctx, variants, f"float {k} most inaccurate", (), tuple(ranked[:k])):
            return {n: round(errs[n], 4) for n in ranked[:k]}, ()
        if k >= limit:
            break
        k *= 2
    kind = {c.name: c.op for c in costs}
    by_type: dict[str, float] = {}
    for n, err in errs.items():
        if kind.get(n) and kind[n] not in DATA_MOVEMENT:
            by_type[kind[n]] = by_type.get(kind[n], 0.0) + err
    for t in sorted(by_type, key=lambda t: -by_type[t])[:MAX_ERROR_TYPES]:
        if _try_accuracy(ctx, variants, f"float {t} (int8 error)", (t,), ()):
            return {}, (t,)
    return {}, ()


def _try_accuracy(ctx: SearchContext, variants: list[Variant], name: str, ops: tuple[str, ...], nodes: tuple[str, ...]) -> bool:
    """Build a variant keeping ``ops``/``nodes`` float for accuracy, screen its parity, keep it; whether it is within parity."""
    v = ctx.build(name, ops, nodes, "too much int8 error")
    if v.error:
        return False
    v.facts.update(error_nodes=list(nodes), error_types=list(ops))
    v.quality, v.parity, v.accurate = ctx.judge.accuracy(Path(v.facts["path"]))
    variants.append(v)
    return bool(v.accurate)


def _converge(ctx: SearchContext, variants: list[Variant], baseline: Variant, costs: list[OpCost]) -> int:
    """Local moves by op type around the current choice until it stops changing; returns the rounds run."""
    types = _slow_types(costs)
    tried = {(frozenset(v.deny_ops), frozenset(v.deny_nodes)) for v in variants}
    for r in range(MAX_ROUNDS):
        best = select(variants, baseline, ctx.objective).chosen
        if best.baseline:
            return r
        moves = []
        for t in [*best.deny_ops, *[t for t in types if t not in best.deny_ops]]:
            ops = tuple(o for o in best.deny_ops if o != t) if t in best.deny_ops else (*best.deny_ops, t)
            key = (frozenset(ops), frozenset(best.deny_nodes))
            if key not in tried:
                tried.add(key)
                sign = "-" if t in best.deny_ops else "+"
                move = ctx.build(f"{best.name} {sign}{t}", ops, best.deny_nodes, f"local move from {best.name}")
                move.facts.update(error_nodes=best.facts.get("error_nodes", []), error_types=best.facts.get("error_types", []))
                moves.append(move)
        if not moves:
            return r
        _measure(ctx, [*moves, best], baseline, f"local moves (round {r + 1})", 0.75 + 0.03 * r)
        variants.extend(moves)
        if select(variants, baseline, ctx.objective).chosen is best:
            return r + 1
    return MAX_ROUNDS


def _finals(ctx: SearchContext, variants: list[Variant], baseline: Variant) -> Selection:
    """Re-time the finalists together, choose, and confirm the choice's parity on every evaluation sample."""
    for _ in range(3):
        measured = sorted((v for v in variants if v.measured and v.accurate), key=lambda v: v.ratio or 0.0)
        if not measured:
            break
        finalists = measured[:FINALISTS]
        chosen = select(variants, baseline, ctx.objective).chosen
        if not chosen.baseline and chosen not in finalists:
            finalists.append(chosen)
        ctx.progress(f"tflite int8: re-timing {len(finalists)} finalists", 0.85)
        p50 = ctx.judge.latency({"float": ctx.float_path, **{str(i): Path(v.facts["path"]) for i, v in enumerate(finalists)}},
                                rounds=400, budget_s=10.0, min_rounds=25)
        for i, v in enumerate(finalists):
            v.p50_ms, v.base_ms = p50[str(i)], p50["float"]
        baseline.p50_ms = baseline.base_ms = p50["float"]
        selection = select(variants, baseline, ctx.objective)
        chosen = selection.chosen
        if chosen.baseline:
            return selection
        quality, parity, ok = ctx.judge.accuracy(Path(chosen.facts["path"]), full=True)
        chosen.facts["full_parity"] = parity
        if ok:
            return selection
        chosen.accurate, chosen.quality, chosen.parity = False, quality, parity  # within parity on the subset only
    return select(variants, baseline, ctx.objective)


def float_layers(outcome: SearchOutcome, ctx: SearchContext) -> list[dict[str, Any]]:
    """Every op the shipped variant computes in float, and why: too much error, slower in int8, or no int8 kernel."""
    blob = outcome.blob(ctx)
    if blob is None:
        return []
    chosen = outcome.selection.chosen
    by_name = {c.name: c for c in outcome.costs}
    out = []
    for n in float_compute_ops(nodes(blob)):
        c = by_name.get(n.name)
        if n.name in chosen.facts.get("error_nodes", ()):
            why = f"too much error in int8 (RMS error {outcome.error_nodes[n.name]:.2f} output steps; parity failed with it in int8)"
        elif n.op in chosen.facts.get("error_types", ()):
            why = f"too much error in int8 (parity failed with every {n.op} in int8)"
        elif n.name in chosen.deny_nodes or (n.op in chosen.deny_ops and (c is None or c.slower_in_int8)):
            why = "slower in int8" + (f" ({_times(c)})" if c and c.float_us is not None and c.int8_us is not None else "")
        elif n.op in chosen.deny_ops:  # this one alone gains in int8, its op type as a whole does not
            t = summarize(outcome.costs)[n.op]
            why = (f"float with every {n.op}: together slower in int8 ({t['int8_us']:.0f} µs vs {t['float_us']:.0f} µs in float"
                   + (f", {t['int8_off_xnnpack']} off XNNPACK" if t["int8_off_xnnpack"] else "") + ")"
                   + (f"; this one {_times(c)}" if c and c.float_us is not None and c.int8_us is not None else ""))
        else:
            why = "no int8 kernel (the converter kept it float)"
        out.append({"op": n.op, "node": n.name, "why": why})
    return out


def _times(c: OpCost) -> str:
    return f"{c.int8_us:.0f} µs vs {c.float_us:.0f} µs in float" + (", off XNNPACK" if c.int8_xnnpack is False else "")


def _worker_error(message: str) -> Exception:
    from edgekit.tf_process import WorkerError

    return WorkerError("quantization", message)
