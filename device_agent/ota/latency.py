"""Is the new model slower than the one it replaces? Measured in pairs, alternately, in the same window.

A latency verdict from a handful of requests on a busy host is noise: the p95 of 20 live requests
moves 8x when another process takes the CPU, and a baseline measured minutes earlier, under other
load, is no yardstick. So probation does not compare the new model's live latencies with an old
number. On the updater thread it runs the new and the previous model one after the other on the
same input (a recent live request, or the new model's self-test vector), in random order, pair
after pair, so both are sampled across the same moments of the host's load.

What is compared is what each model costs when the host leaves it alone: the fastest tenth of its
runs (the 10th percentile). Load only ever adds time, and it adds more to the longer run — on 2
busy cores a model 3x slower has most of its runs preempted and measures 15-20x at its median,
while an identical model measures 1x; so medians, p95s and even per-pair ratios report the host as
much as the model. After ``latency_samples`` pairs the ratio of the two 10th percentiles (new /
old) is bootstrapped over the pairs; the verdict is "slower" only when the lower bound of its
one-sided 95 % confidence interval is above ``max_latency_ratio`` and the new model adds more than
``latency_floor_ms`` (at those percentiles). Medians and p95s are reported beside it. Measured
here (benchmarks/ota_probation.py, 2 cores, bursty load): identical models 0.9-1.1x, a model 3x
slower 2.7-3.0x.

Cost: the runs take at most ``DUTY`` of the updater thread's time (a pair that took d seconds is
followed by a pause of ``d * (1 / DUTY - 1)``), and at most ``TICK_BUDGET_S`` per tick, so a slow
model is measured slowly rather than loading the device it runs on.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from device_agent.contract.types import Feeds
from device_agent.ota.job import ProbationPolicy
from device_agent.ota.verdicts import Runnable, Verdict

__all__ = ["CONFIDENCE", "Comparison", "LatencyJudge", "compare_pairs"]

#: one-sided confidence of the bound the verdict uses
CONFIDENCE = 0.95
#: bootstrap resamples (400 x 40 pairs: a few milliseconds, once per probation)
RESAMPLES = 400
#: the share of the updater thread's time measurements may take
DUTY = 0.2
#: the longest one tick spends measuring (the updater also watches cancel, stop and the verdict)
TICK_BUDGET_S = 0.005


#: the percentile of each model's runs that stands for its cost: the fastest tenth, the runs load left alone
FAST = 10


@dataclass(frozen=True)
class Comparison:
    """Paired runs (s): each model's fast runs (10th percentile), median and p95, and the ratio of the fast runs
    (new / old) with its bootstrap bounds."""

    pairs: int
    old_fast: float
    new_fast: float
    old_median: float
    new_median: float
    old_p95: float
    new_p95: float
    ratio: float  # new_fast / old_fast
    low: float  # one-sided lower confidence bound of the ratio
    high: float  # one-sided upper confidence bound

    @property
    def added(self) -> float:
        """What the new model adds to a request (s), at the fast runs."""
        return self.new_fast - self.old_fast

    def describe(self) -> str:
        ms = 1e3
        return (f"{self.ratio:.2f}x the previous model's (95% bounds {self.low:.2f}x-{self.high:.2f}x) over {self.pairs} paired runs: "
                f"fast runs {self.new_fast * ms:.3f} vs {self.old_fast * ms:.3f} ms, median {self.new_median * ms:.3f} vs "
                f"{self.old_median * ms:.3f} ms, p95 {self.new_p95 * ms:.3f} vs {self.old_p95 * ms:.3f} ms")


def compare_pairs(old: Sequence[float], new: Sequence[float], *, confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
                  seed: int = 0) -> Comparison:
    """Bootstrap the ratio of the two models' fast runs (:data:`FAST` percentile) over paired runs, resampling pairs."""
    a, b = np.asarray(old, float), np.asarray(new, float)
    if a.shape != b.shape or a.size < 2:
        raise ValueError(f"need at least 2 pairs of equal length, got {a.size} and {b.size}")
    tiny = 1e-9  # a timer that read 0: no division by zero
    idx = np.random.default_rng(seed).integers(0, a.size, (resamples, a.size))
    ratios = np.percentile(b[idx], FAST, axis=1) / np.maximum(np.percentile(a[idx], FAST, axis=1), tiny)
    low, high = np.quantile(ratios, [1 - confidence, confidence])
    fast_a, fast_b = float(np.percentile(a, FAST)), float(np.percentile(b, FAST))
    return Comparison(int(a.size), fast_a, fast_b, float(np.median(a)), float(np.median(b)), float(np.percentile(a, 95)),
                      float(np.percentile(b, 95)), fast_b / max(fast_a, tiny), float(low), float(high))


class LatencyJudge:
    """Paired runs of the candidate and the incumbent on the updater thread, and the verdict they support.

    Args:
        policy: ``latency_samples``, ``max_latency_ratio``, ``latency_floor_ms``.
        candidate / incumbent: the new model and the one it replaced (both loaded).
        fallback: inputs to measure on until a live request offers some (the candidate's self-test vector).
        timer: seconds, monotonic (tests pass a fake one their fake models advance).
    """

    def __init__(self, policy: ProbationPolicy, candidate: Runnable, incumbent: Runnable, fallback: Feeds | None, *,
                 timer: Callable[[], float] = time.perf_counter, seed: int | None = None) -> None:
        self.policy = policy
        self.candidate = candidate
        self.incumbent = incumbent
        self.timer = timer
        self.old: list[float] = []
        self.new: list[float] = []
        self.problem: str | None = None  # why latency cannot be judged (a model failed outside the request path)
        self.comparison: Comparison | None = None
        self._inputs = fallback
        self._warm = False
        self._next = 0.0
        self._rng = random.Random(seed)

    @property
    def done(self) -> bool:
        return self.problem is not None or self.comparison is not None

    def offer(self, inputs: Feeds) -> None:
        """A live request's inputs (request path: one reference store, no copy — requests never change their inputs)."""
        self._inputs = inputs

    def step(self) -> None:
        """Run pairs while this tick's budget, the duty cycle and the sample count allow (updater thread)."""
        start = self.timer()
        while not self.done and self._inputs is not None:
            now = self.timer()
            if now < self._next or now - start >= TICK_BUDGET_S:
                return
            try:
                self._pair(self._inputs)
            except Exception as e:  # a model failing here is for the request path's error count to judge, not this
                self.problem = f"latency not judged: a model failed outside the request path ({type(e).__name__}: {e})"
                return
            if len(self.new) >= self.policy.latency_samples:
                self.comparison = compare_pairs(self.old, self.new, seed=self._rng.randrange(1 << 30))

    def _pair(self, inputs: Feeds) -> None:
        runs = [("old", self.incumbent), ("new", self.candidate)]
        self._rng.shuffle(runs)  # neither model always runs on the caches the other warmed
        took = {}
        t0 = self.timer()
        for name, model in runs:
            t = self.timer()
            model.run(inputs)
            took[name] = self.timer() - t
        if not self._warm:  # the incumbent sat idle since the swap: its first run pays for cold caches
            self._warm = True
        else:
            self.old.append(took["old"])
            self.new.append(took["new"])
        elapsed = self.timer() - t0
        self._next = self.timer() + elapsed * (1 / DUTY - 1)

    def verdict(self) -> Verdict | None:
        """Failed on latency, or None (not slower, or not judged yet / not judgeable: see :meth:`note`)."""
        c, p = self.comparison, self.policy
        if c is None or c.low <= p.max_latency_ratio or c.added * 1e3 <= p.latency_floor_ms:
            return None
        return Verdict(False, "latency", f"the new model takes {c.ratio:.1f}x the previous model's time on the same inputs, both run "
                       f"alternately ({c.pairs} pairs; the 95% lower bound {c.low:.1f}x exceeds the bound {p.max_latency_ratio:g}x): "
                       f"fast runs {c.new_fast * 1e3:.3f} vs {c.old_fast * 1e3:.3f} ms, median {c.new_median * 1e3:.3f} vs "
                       f"{c.old_median * 1e3:.3f} ms, p95 {c.new_p95 * 1e3:.3f} vs {c.old_p95 * 1e3:.3f} ms")

    def note(self) -> str:
        """What latency showed, for the probation's detail."""
        if self.comparison is not None:
            return f"latency {self.comparison.describe()}"
        return self.problem or f"latency: {len(self.new)} of {self.policy.latency_samples} paired runs, not judged"
