"""Watching a model prove itself on live requests: probation after the swap, shadow before it.

Both are fed from the request path (:meth:`Probation.observe`) and must stay cheap there: a lock,
a few counters, a bounded deque, one reference store. Latency is not judged there: the
:class:`~device_agent.ota.latency.LatencyJudge` measures the new and the previous model in pairs on
the updater thread (:meth:`Probation.tick`). A verdict sets ``decided`` so the updater thread acts
within milliseconds (the old model is still loaded, rolling back is a pointer write and a reference swap).
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping

import numpy as np

from device_agent.contract.types import Array, Feeds
from device_agent.ota.job import ProbationPolicy
from device_agent.ota.latency import LatencyJudge
from device_agent.ota.verdicts import Runnable, Verdict

__all__ = ["LatencyWindow", "Probation", "Runnable", "Shadow", "Verdict", "nonfinite", "top1"]


class LatencyWindow:
    """The last ``size`` latencies of the model being served (seconds)."""

    def __init__(self, size: int = 512) -> None:
        self._d: deque[float] = deque(maxlen=size)

    def add(self, s: float) -> None:
        self._d.append(s)

    def __len__(self) -> int:
        return len(self._d)

    def p95(self) -> float | None:
        return float(np.percentile(np.fromiter(self._d, float), 95)) if self._d else None

    def clear(self) -> None:
        self._d.clear()


def nonfinite(outputs: Mapping[str, Array]) -> str | None:
    """Name of the first floating output holding NaN or ±inf."""
    for name, y in outputs.items():
        if np.issubdtype(y.dtype, np.floating) and not np.isfinite(y).all():
            return name
    return None


def top1(outputs: Mapping[str, Array]) -> Array:
    """Arg-max over the last axis of the first output, per sample."""
    y = np.asarray(next(iter(outputs.values())))
    classes: Array = y.reshape(y.shape[0], -1).argmax(axis=1) if y.ndim >= 2 else y.reshape(1, -1).argmax(axis=1)
    return classes


class Probation:
    """Counts the candidate's requests and decides. ``judge`` compares its latency with the previous
    model's (None: there is no previous model to compare with, latency is not judged)."""

    def __init__(self, policy: ProbationPolicy, *, judge: LatencyJudge | None, started: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.policy = policy
        self.judge = judge
        self.started = started
        self.clock = clock
        self.requests = 0
        self.errors = 0
        self.latency = LatencyWindow(1024)  # the candidate's live latencies (for the record, not the verdict)
        self.verdict: Verdict | None = None
        self.decided = threading.Event()
        self._lock = threading.Lock()

    def observe(self, outputs: Mapping[str, Array] | None, latency_s: float | None, error: str | None, inputs: Feeds | None = None) -> None:
        if self.decided.is_set():  # decided: no lock taken on the request path any more
            return
        judge = self.judge
        if judge is not None and inputs is not None:
            judge.offer(inputs)
        with self._lock:
            if self.verdict is not None:
                return
            self.requests += 1
            p = self.policy
            if error is not None:
                self.errors += 1
            else:
                if latency_s is not None:
                    self.latency.add(latency_s)
                bad = nonfinite(outputs) if outputs is not None else None
                if bad is not None:
                    self._decide(False, "nan_outputs", f"output {bad!r} held NaN/Inf on request {self.requests} of probation")
                    return
            if self.requests >= p.min_requests:
                rate = self.errors / self.requests
                if rate > p.max_error_rate:
                    self._decide(False, "error_rate", f"runtime error rate {rate:.1%} over {self.requests} requests exceeds "
                                 f"{p.max_error_rate:.1%}")
                    return
            if self.requests >= p.requests and (judge is None or judge.done):
                self._pass()

    def tick(self) -> None:
        """Called by the updater while it waits: measures latency in pairs, ends probation when it is judged or its time is up."""
        if self.verdict is not None:
            return
        judge = self.judge
        if judge is not None and not judge.done:
            judge.step()  # outside the lock: requests keep flowing while the models run
        with self._lock:
            if self.verdict is not None:
                return
            failed = judge.verdict() if judge is not None else None
            if failed is not None:
                self._decide(failed.passed, failed.reason, failed.detail)
            elif self.clock() - self.started >= self.policy.seconds or (
                    self.requests >= self.policy.requests and (judge is None or judge.done)):
                self._pass()

    def _pass(self) -> None:
        p95 = self.latency.p95()
        lat = f", live p95 {p95 * 1e3:.3f} ms" if p95 is not None else ""
        note = f"; {self.judge.note()}" if self.judge is not None else "; latency not judged (no previous model to compare with)"
        self._decide(True, "passed", f"{self.requests} requests, {self.errors} errors{lat} in {self.clock() - self.started:.1f} s{note}")

    def _decide(self, passed: bool, reason: str, detail: str) -> None:
        self.verdict = Verdict(passed, reason, detail)
        self.decided.set()

    def progress(self) -> str:
        judged = f", latency pairs {len(self.judge.new)}/{self.policy.latency_samples}" if self.judge is not None else ""
        return f"probation: {self.requests}/{self.policy.requests} requests, {self.errors} errors{judged}"


class Shadow:
    """Runs the candidate beside the incumbent on a sample of live inputs (on its own thread, so
    requests never wait for it) and compares top-1 classes."""

    def __init__(self, candidate: Runnable, policy: ProbationPolicy, *, started: float, clock: Callable[[], float] = time.time,
                 seed: int | None = None) -> None:
        self.candidate = candidate
        self.policy = policy
        self.started = started
        self.clock = clock
        self.compared = 0
        self.agreed = 0
        self.verdict: Verdict | None = None
        self.decided = threading.Event()
        self._q: queue.Queue[tuple[Feeds, Array]] = queue.Queue(maxsize=64)
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgekit-shadow", daemon=True)
        self._thread.start()

    def observe(self, inputs: Mapping[str, Array], outputs: Mapping[str, Array]) -> None:
        if self.verdict is None and self._rng.random() < self.policy.shadow_sample:
            try:
                self._q.put_nowait(({k: np.array(v, copy=True) for k, v in inputs.items()}, top1(outputs)))
            except queue.Full:
                pass  # shadowing is a sample: skipping one under load is fine

    def _run(self) -> None:
        while not self._stop.is_set() and self.verdict is None:
            try:
                inputs, want = self._q.get(timeout=0.05)
            except queue.Empty:
                continue
            try:
                got = self.candidate.run(inputs)
            except Exception as e:  # the candidate failing is the finding, not a crash
                self._decide(False, "shadow_error", f"the candidate failed on a live input: {e}")
                return
            bad = nonfinite(got)
            if bad is not None:
                self._decide(False, "nan_outputs", f"the candidate's output {bad!r} held NaN/Inf on a live input (shadow)")
                return
            g = top1(got)
            self.compared += len(want)
            self.agreed += int((g == want).sum()) if g.shape == want.shape else 0
            if self.compared >= self.policy.shadow_requests:
                self._finish()

    def tick(self) -> None:
        if self.verdict is None and self.clock() - self.started >= self.policy.shadow_seconds:
            self._finish(timed_out=True)

    def _finish(self, timed_out: bool = False) -> None:
        if self.compared == 0:
            self._decide(True, "passed", f"shadow: no live traffic in {self.policy.shadow_seconds:g} s; promoted on the self-test alone")
            return
        agreement = self.agreed / self.compared
        note = f"top-1 agreement {agreement:.1%} over {self.compared} sampled inputs (bound {self.policy.shadow_min_agreement:.0%})"
        if timed_out:
            note += f", shadow time up after {self.policy.shadow_seconds:g} s"
        self._decide(agreement >= self.policy.shadow_min_agreement, "passed" if agreement >= self.policy.shadow_min_agreement
                     else "shadow_disagreement", note)

    def _decide(self, passed: bool, reason: str, detail: str) -> None:
        if self.verdict is None:
            self.verdict = Verdict(passed, reason, detail)
            self.decided.set()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
