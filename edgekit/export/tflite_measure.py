"""Accuracy and latency of ``.tflite`` variants, as the parent process would measure them. Runs in the TF worker process.

The int8 search (:mod:`edgekit.export.tflite_search`) runs in the worker, where the calibrated model
lives, so the parent hands it what judging needs (``job["judge"]``): the evaluation inputs and labels
(``eval.npz``, source layout), the source's outputs on them (quality, as every artifact is measured:
:meth:`edgekit.reference.Reference.quality`) and the float model's (parity, with the tolerance the
.tflite will be checked with: :meth:`~edgekit.reference.Reference.parity`). Variants run through the
device agent's ``LiteRTBackend``, layout and quantized I/O handled as on the device.

Latency is timed round-robin, one call of each variant and of the float .tflite per round, so load
that comes and goes hits all alike and each variant's ratio to the float .tflite holds. With one
thread the clock is the calling thread's CPU time (LiteRT runs a 1-thread model on the caller):
on a shared CPU, time spent waiting for the core is not the model's. With more threads it is the
wall clock.
"""

from __future__ import annotations

import gc
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from device_agent.contract.manifest import Artifact, TensorSpec
from edgekit.data import Dataset
from edgekit.evaluate import one_sample, run_dataset
from edgekit.reference import Reference

__all__ = ["SEARCH_SAMPLES", "Judge"]

#: evaluation samples each candidate is screened on; the chosen variant is confirmed on all of them
SEARCH_SAMPLES = 256


class Judge:
    """Quality, parity and latency of .tflite files that share one signature (the artifact's)."""

    def __init__(self, judge: dict[str, Any], record: Artifact, *, threads: int) -> None:
        self.threads = threads
        self.record = record
        self.tolerance = judge.get("tolerance")
        self.precision = judge.get("precision", "int8")
        src_in = tuple(_spec(d) for d in judge["source_inputs"])
        src_out = tuple(_spec(d) for d in judge["source_outputs"])
        with np.load(judge["eval"], allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        labels = arrays.pop("labels", None)
        with np.load(judge["source_outputs_file"], allow_pickle=False) as z:
            source_out = {k: z[k] for k in z.files}
        with np.load(judge["float_outputs_file"], allow_pickle=False) as z:
            self._float_out = {k: z[k] for k in z.files}
        data = Dataset(arrays, labels, generated=bool(judge.get("generated")))
        self.full = Reference(Path("source"), src_in, src_out, bool(judge["classifier"]), data, None, source_out, judge.get("ref_accuracy"))
        n = data.n
        idx = np.sort(np.random.default_rng(0).choice(n, size=SEARCH_SAMPLES, replace=False)) if n > SEARCH_SAMPLES else np.arange(n)
        self._idx = idx
        sub = Dataset({k: v[idx] for k, v in arrays.items()}, None if labels is None else labels[idx], generated=data.generated)
        # ref_accuracy None: the source's accuracy is recomputed on the same subset
        self.screen = replace(self.full, eval_data=sub, ref_outputs={k: v[idx] for k, v in source_out.items()}, ref_accuracy=None)
        self.feeds = one_sample(data, src_in)

    def backend(self, path: Path) -> Any:
        from device_agent.runtime.litert import LiteRTBackend

        return LiteRTBackend(path, replace(self.record, file=path.name), threads=self.threads)

    def accuracy(self, path: Path, *, full: bool = False) -> tuple[dict[str, Any], dict[str, Any], bool]:
        """(quality, parity with the float model, accurate) over the screening subset, or every evaluation sample."""
        ref = self.full if full else self.screen
        float_out = self._float_out if full else {k: v[self._idx] for k, v in self._float_out.items()}
        outs = run_dataset(self.backend(path), ref.eval_data, ref.inputs)
        quality = ref.quality(outs)
        parity = ref.parity(float_out, outs, self.precision, tolerance=self.tolerance)
        return quality.to_dict(), parity, bool(parity["ok"])

    def latency(self, paths: dict[str, Path], *, rounds: int = 200, budget_s: float = 6.0, min_rounds: int = 15) -> dict[str, float]:
        """p50 ms of each file, timed round-robin (one call each per round) after a warm-up."""
        backends = {k: self.backend(p) for k, p in paths.items()}
        clock = time.thread_time if self.threads == 1 else time.perf_counter
        for b in backends.values():
            for _ in range(5):
                b.run(self.feeds)
        times: dict[str, list[float]] = {k: [] for k in backends}
        gc_was = gc.isenabled()
        gc.disable()
        try:
            deadline = time.perf_counter() + budget_s
            for i in range(rounds):
                for k, b in backends.items():
                    t0 = clock()
                    b.run(self.feeds)
                    times[k].append(clock() - t0)
                if i + 1 >= min_rounds and time.perf_counter() > deadline:
                    break
        finally:
            if gc_was:
                gc.enable()
        return {k: float(np.median(t) * 1e3) for k, t in times.items()}

    @property
    def clock(self) -> str:
        return "thread CPU time (1 thread)" if self.threads == 1 else f"wall clock ({self.threads} threads)"


def _spec(d: dict[str, Any]) -> TensorSpec:
    return TensorSpec(d["name"], d["dtype"], tuple(d["shape"]), d.get("layout"), tuple(d["perm"]) if d.get("perm") else None)
