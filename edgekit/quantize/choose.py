"""Which measured candidate ships, for an objective: the rule, on numbers (no timing here).

Candidates are judged as they ship: latency in a plain onnxruntime session (batch 1, the run's
threads), size of the file, accuracy drop on the evaluation data. The float model is always a
candidate ("keep every layer float"), so under the default objective the result is never slower
than float:

- ``balanced`` (default): among the accurate candidates that are not slower than float, the
  fastest one within ``SIZE_GOAL`` (0.35x) of the float size; if none is that small, the smallest
  one that is not slower.
- ``latency``: the fastest accurate candidate.
- ``size``: the smallest accurate candidate, even when it is slower than float (said in one line).

Latencies within ``NOISE`` of each other are a tie (a shared CPU's noise), settled by size.
When no int8 candidate meets the accuracy bound, the most accurate one is kept and the bound is
reported as missed (exit 3), as before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edgekit.choices import Objective

__all__ = ["NOISE", "NOT_SLOWER", "SIZE_GOAL", "Choice", "Option", "choose"]

#: latencies within this share of each other are the same on a shared CPU
NOISE = 0.05
#: "not slower than float", measured: at most the float latency (the float model itself is at exactly 1.0)
NOT_SLOWER = 1.0
#: the balanced objective's size goal, as a share of the float model's size
SIZE_GOAL = 0.35


@dataclass(frozen=True)
class Option:
    """One candidate in one artifact form, as measured."""

    name: str
    latency_ms: float
    size_bytes: int
    drop: float  # accuracy points lost (top-1 disagreement without labels); nan: unknown
    accurate: bool  # within the bound
    int8: bool = True  # False: the float model


@dataclass(frozen=True)
class Choice:
    name: str
    why: str
    met_bound: bool
    slower: bool  # slower than the float baseline
    conflict: str = ""  # one line when the size goal and the speed goal pull apart


def choose(options: list[Option], *, baseline_ms: float, baseline_size: int, objective: Objective, max_drop: float,
           label: str = "", fallback_ms: float | None = None) -> Choice:
    """The option to ship and why, in one line (plus a conflict line). ``label`` names the form (" as .ort").

    ``fallback_ms``: a second baseline for "not slower" when no option beats ``baseline_ms`` (an ``.ort`` is
    held to the float ``.onnx`` first, then to the float ``.ort``).
    """
    int8 = [o for o in options if o.int8]
    if int8 and not any(o.accurate for o in int8):
        best = min(int8, key=lambda o: (o.drop if math.isfinite(o.drop) else math.inf, o.latency_ms))
        why = (f"no int8 candidate met the {max_drop:g}-pt accuracy bound{label}; kept the most accurate, {best.name}, which loses "
               f"{best.drop:.2f} pts. Try --max-drop, more/representative --data, --calibration entropy|percentile, or --exclude "
               "the most sensitive nodes")
        return Choice(best.name, why, False, best.latency_ms > baseline_ms * NOT_SLOWER)
    pool = [o for o in options if o.accurate]
    fast = [o for o in pool if o.latency_ms <= baseline_ms * NOT_SLOWER]
    against = "fp32"
    if not fast and fallback_ms is not None:
        fast, baseline_ms, against = [o for o in pool if o.latency_ms <= fallback_ms * NOT_SLOWER], fallback_ms, "the fp32 .ort"
    best, rule = _pick(pool, fast, objective, baseline_size)
    rule = rule.format(label=label, against=against)
    ratio, size_ratio = best.latency_ms / baseline_ms, best.size_bytes / baseline_size
    slower = best.latency_ms > baseline_ms * NOT_SLOWER
    if not best.int8:
        why = (f"int8 does not pay off here{label}: no int8 candidate within the {max_drop:g}-pt bound ran faster than {against} "
               "(fastest: " + _fastest(pool, baseline_ms) + "); every layer stays float")
    else:
        why = f"{rule}: {ratio:.2f}x {against} latency, {size_ratio:.2f}x size, within the {max_drop:g}-pt bound"
    lossy = [o for o in options if not o.accurate and o.latency_ms < best.latency_ms * (1 - NOISE)]
    if lossy:
        f = min(lossy, key=lambda o: o.latency_ms)
        why += f"; {f.name} was faster but lost {f.drop:.2f} pts"
    return Choice(best.name, why, True, slower, _conflict(best, pool, fast, objective, baseline_ms, baseline_size, label))


def _pick(pool: list[Option], fast: list[Option], objective: Objective, baseline_size: int) -> tuple[Option, str]:
    """The option and its rule, worded with ``{label}`` (the form) and ``{against}`` (the baseline) to fill in."""
    if objective is Objective.LATENCY:
        return _fastest_then_smallest(pool), "fastest{label}"
    if objective is Objective.SIZE:
        return _smallest_then_fastest(pool), "smallest{label}"
    candidates = fast or pool  # fast is empty only for an .ort held to a float .onnx it cannot match
    small = [o for o in candidates if o.size_bytes <= SIZE_GOAL * baseline_size]
    if small:
        return _fastest_then_smallest(small), f"fastest{{label}} within {SIZE_GOAL:g}x the fp32 size and not slower than {{against}}"
    return (_smallest_then_fastest(candidates),
            f"smallest{{label}} not slower than {{against}} (nothing within {SIZE_GOAL:g}x the fp32 size is as fast)")


def _fastest_then_smallest(options: list[Option]) -> Option:
    fastest = min(options, key=lambda o: (o.latency_ms, o.size_bytes))
    return min((o for o in options if o.latency_ms <= fastest.latency_ms * (1 + NOISE)), key=lambda o: (o.size_bytes, o.latency_ms))


def _smallest_then_fastest(options: list[Option]) -> Option:
    smallest = min(options, key=lambda o: (o.size_bytes, o.latency_ms))
    return min((o for o in options if o.size_bytes <= smallest.size_bytes * 1.02), key=lambda o: (o.latency_ms, o.size_bytes))


def _fastest(options: list[Option], baseline_ms: float) -> str:
    int8 = [o for o in options if o.int8]
    if not int8:
        return "none was built"
    f = min(int8, key=lambda o: o.latency_ms)
    return f"{f.name} at {f.latency_ms / baseline_ms:.2f}x"


def _conflict(best: Option, pool: list[Option], fast: list[Option], objective: Objective, baseline_ms: float, baseline_size: int,
              label: str) -> str:
    """One line when the size goal and the speed goal pull apart for this choice, else ""."""
    goal = SIZE_GOAL * baseline_size
    if objective is Objective.SIZE and best.latency_ms > baseline_ms * NOT_SLOWER:
        return (f"size and speed conflict{label}: the smallest, {best.name} ({best.size_bytes / baseline_size:.2f}x size), runs "
                f"{best.latency_ms / baseline_ms:.2f}x fp32; --objective balanced keeps it at least as fast as fp32")
    small_slow = [o for o in pool if o.size_bytes <= goal and o not in fast]
    if objective is Objective.BALANCED and best.size_bytes > goal and small_slow:
        s = min(small_slow, key=lambda o: o.latency_ms)
        return (f"size and speed conflict{label}: within {SIZE_GOAL:g}x the size only slower candidates exist (best {s.name}, "
                f"{s.latency_ms / baseline_ms:.2f}x fp32); shipped {best.name} at {best.size_bytes / baseline_size:.2f}x size instead "
                "(--objective size takes the smaller one)")
    quicker = [o for o in pool if o.latency_ms < best.latency_ms * (1 - NOISE)]
    if objective is Objective.BALANCED and quicker:
        q = min(quicker, key=lambda o: o.latency_ms)
        return (f"size and speed conflict{label}: {q.name} is faster ({q.latency_ms / baseline_ms:.2f}x fp32) but "
                f"{q.size_bytes / baseline_size:.2f}x the size; shipped {best.name} within the size goal (--objective latency takes "
                "the faster one)")
    return ""
