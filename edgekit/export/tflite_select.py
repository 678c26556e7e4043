"""Which int8 ``.tflite`` variant ships: the rule, on measured numbers (no TensorFlow, no timing here).

A *variant* is the same calibrated model quantized with some ops kept float (a deny-list by op type
and/or by node, :mod:`edgekit.export.tflite_search`); the float ``.tflite`` is the baseline every
variant is timed against, round-robin in one session, so each variant carries its latency as a
ratio to it. Only *accurate* variants compete: parity with the float model on the evaluation data,
the rule every int8 .tflite is checked with (:func:`edgekit.evaluate.parity`).

"As fast as the float .tflite" means a p50 no higher than the float's, or at most 5 µs higher
(below that a difference is timing noise, as everywhere in edgekit). Among variants, latencies
within 2 % (or 5 µs) of each other tie, and the smaller file wins the tie (files within 1 % tie too, and
then the variant with the fewest float ops wins).

=========  ===================================================================================
latency    the fastest accurate variant, the float .tflite included (never slower)
balanced   (default) the fastest variant that is as fast as the float .tflite and at most 0.35x
           its size; else the smallest variant that is as fast (size and speed conflict, said
           so); when no variant is as fast (said so): the fastest within 0.35x size, else the
           float .tflite
size       the smallest accurate variant, however fast (said so when it is slower)
=========  ===================================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgekit.export.config import Objective

__all__ = ["ABS_TIE_MS", "BALANCED_SIZE", "FAST_TIE", "SIZE_TIE", "Selection", "Variant", "as_fast", "select"]

#: p50 differences up to this many milliseconds are timing noise, whatever the model's latency
ABS_TIE_MS = 0.005
#: variants within this share of the fastest one's latency tie; the smaller file wins
FAST_TIE = 0.02
#: sizes within this share of each other tie (a float op's weights against its per-channel int8 parameters)
SIZE_TIE = 0.01
#: the balanced objective's size bound, as a share of the float .tflite
BALANCED_SIZE = 0.35


@dataclass
class Variant:
    """One candidate .tflite and what was measured of it."""

    name: str  # "int8", "float: HARD_SWISH", "float: 12 slow nodes", "float .tflite"
    deny_ops: tuple[str, ...] = ()  # TFLite op types kept float
    deny_nodes: tuple[str, ...] = ()  # output tensor names of single ops kept float
    size_bytes: int = 0
    p50_ms: float | None = None
    base_ms: float | None = None  # the float .tflite's p50 in the same round-robin
    accurate: bool | None = None  # parity with the float model on the evaluation data
    quality: dict[str, Any] | None = None
    parity: dict[str, Any] | None = None
    error: str = ""
    baseline: bool = False  # the float .tflite itself
    origin: str = ""  # why this variant was tried (slow in int8, too much error, a local move)
    facts: dict[str, Any] = field(default_factory=dict)  # per-variant extras (float ops left by the converter, ...)

    @property
    def ratio(self) -> float | None:
        """Latency as a share of the float .tflite's, both measured in the same session."""
        if self.p50_ms is None or not self.base_ms:
            return None
        return self.p50_ms / self.base_ms

    @property
    def measured(self) -> bool:
        return not self.error and self.accurate is not None and self.ratio is not None

    def to_dict(self, float_size: int) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "origin": self.origin, "deny_ops": list(self.deny_ops), "deny_nodes": len(self.deny_nodes)}
        if self.error:
            return {**d, "error": self.error}
        d.update(size_bytes=self.size_bytes, size_ratio=round(self.size_bytes / float_size, 4) if float_size else None,
                 latency_ratio=None if self.ratio is None else round(self.ratio, 4),
                 p50_ms=None if self.p50_ms is None else round(self.p50_ms, 4), accurate=self.accurate)
        if self.quality is not None:
            d["quality"] = self.quality
        if self.parity is not None:
            d["parity"] = {k: (float(f"{v:.6g}") if isinstance(v, float) else v) for k, v in self.parity.items()}
        return d


@dataclass(frozen=True)
class Selection:
    chosen: Variant
    why: str
    note: str = ""  # one line for the user when no int8 variant is as fast, or size and speed conflict


def as_fast(v: Variant) -> bool:
    """Whether ``v`` is as fast as the float .tflite it was timed against (within 5 µs)."""
    return v.ratio is not None and v.p50_ms is not None and v.base_ms is not None and (v.p50_ms <= v.base_ms + ABS_TIE_MS)


def select(variants: list[Variant], baseline: Variant, objective: Objective | str) -> Selection:
    """The variant to ship under ``objective``, why, and a note when the goals conflict.

    ``variants`` are the int8 candidates (measured or not); ``baseline`` is the float .tflite,
    ``size_bytes`` set, shipped when nothing else qualifies.
    """
    objective = Objective(objective)
    ok = [v for v in variants if v.measured and v.accurate and not v.baseline]
    if not ok:
        judged = any(not v.error and v.accurate is not None for v in variants)
        why = "no int8 variant passed parity with the float model" if judged else "no int8 variant could be built"
        return Selection(baseline, f"the float .tflite: {why}", f"{why}; the .tflite keeps every layer float")
    fast = [v for v in ok if as_fast(v)]
    best_ratio = min(_ratio(v) for v in ok)
    none_fast = "" if fast else f"no int8 variant is as fast as the float .tflite here (the fastest runs at {best_ratio:.2f}x)"
    if objective == Objective.LATENCY:
        if not fast:
            return Selection(baseline, f"the float .tflite: {none_fast} (objective latency)", none_fast + "; the .tflite keeps every layer float")
        best = _fastest(fast)
        return Selection(best, f"{best.name}: the fastest accurate variant ({_facts(best, baseline)}; objective latency)")
    if objective == Objective.SIZE:
        best = min(ok, key=lambda v: (v.size_bytes, _ratio(v)))
        note = "" if as_fast(best) else f"the smallest variant runs at {_ratio(best):.2f}x the float .tflite (objective size)"
        return Selection(best, f"{best.name}: the smallest accurate variant ({_facts(best, baseline)}; objective size)", note)
    return _balanced(ok, fast, baseline, none_fast)


def _balanced(ok: list[Variant], fast: list[Variant], baseline: Variant, none_fast: str) -> Selection:
    limit = BALANCED_SIZE * baseline.size_bytes
    small_fast = [v for v in fast if v.size_bytes <= limit]
    if small_fast:
        best = _fastest(small_fast)
        return Selection(best, f"{best.name}: the fastest accurate variant within {BALANCED_SIZE:g}x the float size that is as fast as "
                               f"the float .tflite ({_facts(best, baseline)}; objective balanced)")
    if fast:
        best = min(fast, key=lambda v: (v.size_bytes, _ratio(v)))
        note = (f"size and speed conflict: no variant within {BALANCED_SIZE:g}x the float size is as fast as the float .tflite; "
                f"shipping the smallest that is ({best.size_bytes / baseline.size_bytes:.2f}x the size; --objective size ships the smallest)")
        return Selection(best, f"{best.name}: the smallest variant as fast as the float .tflite ({_facts(best, baseline)}; objective balanced)",
                         note)
    small = [v for v in ok if v.size_bytes <= limit]
    if small:
        best = _fastest(small)
        return Selection(best, f"{best.name}: {none_fast}; the fastest within {BALANCED_SIZE:g}x the float size "
                               f"({_facts(best, baseline)}; objective balanced)", none_fast)
    return Selection(baseline, f"the float .tflite: {none_fast} and none is within {BALANCED_SIZE:g}x its size (objective balanced)",
                     none_fast + "; the .tflite keeps every layer float")


def _fastest(vs: list[Variant]) -> Variant:
    """The fastest of ``vs``; variants within FAST_TIE (or ABS_TIE_MS) of it tie, and the smallest of them wins.

    Sizes within SIZE_TIE of the smallest tie too, and then the variant with the fewest ops kept float wins:
    a float op that buys nothing measurable is not worth shipping.
    """
    top = min(vs, key=lambda v: (_ratio(v), v.size_bytes))
    near = [v for v in vs if _ratio(v) <= _ratio(top) * (1 + FAST_TIE) or (v.p50_ms or 0.0) - (top.p50_ms or 0.0) <= ABS_TIE_MS]
    smallest = min(v.size_bytes for v in near)
    small = [v for v in near if v.size_bytes <= smallest * (1 + SIZE_TIE)]
    return min(small, key=lambda v: (len(v.deny_ops) + len(v.deny_nodes), v.size_bytes, _ratio(v)))


def _ratio(v: Variant) -> float:
    return v.ratio if v.ratio is not None else float("inf")


def _facts(v: Variant, baseline: Variant) -> str:
    return f"{_ratio(v):.2f}x the float .tflite's latency, {v.size_bytes / baseline.size_bytes:.2f}x its size"
