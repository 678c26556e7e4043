"""Per-channel or per-tensor weight scales for a full-integer ``.tflite``: measured on the user's data, not guessed.

TFLiteConverter quantizes weights per output channel by default. The schema stores a float32
scale and an int64 zero point per channel, for each weight and for its int32 bias (whose scales
must be input scale × weight scale), so per-channel costs 24 bytes a channel: 0.015x the fp32
size on the digits CNN (0.285x instead of 0.270x), 1.3 % on MobileNetV2. Per-tensor scales drop
that, and cost accuracy where channel ranges differ (trained depthwise convolutions most).

So, like the ONNX int8 search (:mod:`edgekit.quantize.search`), edgekit converts both, runs them
with LiteRT over the evaluation data, times them round-robin, and ships per-tensor only when it is

* within parity of the float model (:func:`edgekit.evaluate.parity`, the check every int8 .tflite passes),
* as accurate as per-channel: at most one evaluation sample (or 0.1 pt, the larger) worse on
  accuracy (or top-1 agreement, or cosine), and its outputs at most 25 % further (RMS) from the
  float model's, which catches what a top-1 measure cannot see,
* not slower than per-channel beyond timing noise (5 %),

and smaller. Otherwise per-channel ships. ``--tflite-weights per-channel|per-tensor`` skips the
choice. The manifest records both candidates' numbers and the reason (``extra.tflite.weights_choice``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.evaluate import Latency, Quality, measure_latencies, one_sample, run_dataset
from edgekit.reference import Reference
from edgekit.results import ExportedArtifact

__all__ = ["MIN_TIE_PTS", "NOISE", "RMS_RATIO", "WeightsCandidate", "choose", "measure"]

#: latency differences below this share are noise on a shared CPU (as in the ONNX int8 search)
NOISE = 0.05
#: accuracy differences up to one evaluation sample, and at least this many points, are a tie
MIN_TIE_PTS = 0.1
#: ...and the outputs' RMS error against the float model may grow by this factor at most
RMS_RATIO = 1.25


@dataclass
class WeightsCandidate:
    weights: str  # per-channel | per-tensor
    path: Path | None
    size_bytes: int = 0
    facts: dict[str, Any] = field(default_factory=dict)  # the worker's: ops, stripped, notes
    error: str = ""
    quality: Quality | None = None
    parity: dict[str, Any] | None = None  # against the float model the .tflite was converted from
    rms_error: float | None = None  # root mean square of the outputs' error against that float model
    latency: Latency | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.error:
            return {"weights": self.weights, "error": self.error}
        d: dict[str, Any] = {"weights": self.weights, "size_bytes": self.size_bytes}
        if self.quality is not None:
            d["quality"] = self.quality.to_dict()
        if self.rms_error is not None:
            d["rms_error_vs_float"] = float(f"{self.rms_error:.6g}")
        if self.parity is not None:
            d["parity"] = {k: (float(f"{v:.6g}") if isinstance(v, float) else v) for k, v in self.parity.items()}
        if self.latency is not None:
            d["latency"] = self.latency.to_dict()
        return d


def measure(cands: list[WeightsCandidate], ref: Reference, art: ExportedArtifact, *, parent_outputs: dict[str, np.ndarray],
            tolerance: float | None, threads: int = 1) -> None:
    """Fill each buildable candidate's quality (against the source), parity with ``parent_outputs`` and latency.

    ``art`` is the .tflite's record (precision, signature, layout); ``parent_outputs`` are the outputs of the
    float model the candidates were converted from, over ``ref.eval_data``.
    """
    from device_agent.runtime.litert import LiteRTBackend

    timed = {}
    for c in cands:
        if c.error or c.path is None:
            continue
        backend = LiteRTBackend(c.path, replace(art.record(), file=c.path.name), threads=threads)
        outs = run_dataset(backend, ref.eval_data, ref.inputs)
        c.quality = ref.quality(outs)
        c.rms_error = _rms(parent_outputs, outs)
        c.parity = ref.parity(parent_outputs, outs, art.precision, tolerance=tolerance)
        timed[c.weights] = (backend, one_sample(ref.eval_data, ref.inputs))
    if timed:
        lat = measure_latencies(timed, runs=200, budget_s=5.0)
        for c in cands:
            c.latency = lat.get(c.weights, c.latency)


def choose(cands: list[WeightsCandidate], *, n_eval: int) -> tuple[WeightsCandidate, str]:
    """The candidate to ship and why: the first (per-channel, the converter's default) unless a smaller one ties it.

    ``n_eval`` is the number of evaluation samples, which sets how many points one sample is worth.
    """
    default = cands[0]
    if default.error or default.quality is None:
        return default, f"{default.weights} (the others could not be measured)"
    tie = max(MIN_TIE_PTS, 100.0 / max(n_eval, 1))
    if default.parity is not None and not default.parity["ok"]:
        # the default would fail the artifact's check: a candidate that passes it is better, whatever its size
        passing = [c for c in cands[1:] if not c.error and c.quality is not None and c.parity is not None and c.parity["ok"]]
        if passing:
            best = min(passing, key=lambda c: (c.quality.drop, c.size_bytes))
            return best, (f"{best.weights}: {default.weights} fails parity with the float model ({_parity_text(default.parity)}); "
                          f"{best.weights} passes it")
    reasons, eligible = [], []
    for c in cands[1:]:
        why = _rejected(c, default, tie)
        if why:
            reasons.append(f"{c.weights} {why}")
        else:
            eligible.append(c)
    if eligible:
        best = min(eligible, key=lambda c: c.size_bytes)
        saved = default.size_bytes - best.size_bytes
        return best, (f"{best.weights}: {saved:,} bytes ({saved / default.size_bytes:.1%}) smaller than {default.weights}, "
                      f"as accurate (drop {best.quality.drop:.2f} vs {default.quality.drop:.2f} pts, tie {tie:.2f}; "
                      f"RMS error {_ratio(best.rms_error, default.rms_error)} {default.weights}'s) "
                      f"and as fast ({best.latency.p50_ms / default.latency.p50_ms:.2f}x its latency)")
    return default, f"{default.weights}: " + ("; ".join(reasons) if reasons else "no other candidate")


def _rejected(c: WeightsCandidate, default: WeightsCandidate, tie: float) -> str:
    if c.error:
        return f"could not be built ({c.error})"
    if c.quality is None or c.latency is None or default.latency is None:
        return "was not measured"
    if c.parity is not None and not c.parity["ok"]:
        return f"fails parity with the float model ({_parity_text(c.parity)})"
    if not np.isfinite(c.quality.drop) or c.quality.drop > default.quality.drop + tie:
        return (f"loses {c.quality.drop:.2f} pts against {default.quality.drop:.2f} "
                f"(more than one evaluation sample, {tie:.2f} pts)")
    if c.rms_error is not None and default.rms_error is not None and c.rms_error > default.rms_error * RMS_RATIO + 1e-12:
        return (f"is {c.rms_error / default.rms_error:.2f}x as far from the float model (RMS error {c.rms_error:.4g} against "
                f"{default.rms_error:.4g}; at most {RMS_RATIO:g}x)")
    if c.latency.p50_ms > default.latency.p50_ms * (1 + NOISE):
        return f"runs at {c.latency.p50_ms / default.latency.p50_ms:.2f}x {default.weights}'s latency"
    if c.size_bytes >= default.size_bytes:
        return "is not smaller"
    return ""


def _rms(ref: dict[str, np.ndarray], new: dict[str, np.ndarray]) -> float:
    """RMS error over every float output value (outputs pooled), against ``ref``."""
    sq, n = 0.0, 0
    for k, r in ref.items():
        if np.issubdtype(r.dtype, np.floating):
            d = r.astype(np.float64) - new[k].astype(np.float64)
            sq, n = sq + float((d * d).sum()), n + d.size
    return float(np.sqrt(sq / n)) if n else 0.0


def _ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or not b else f"{a / b:.2f}x"


def _parity_text(p: dict[str, Any]) -> str:
    return (f"max abs error {p['max_abs_error']:.4g}, allowed {p['allowed']:.4g}, cosine {p['cosine']:.4f}"
            + (f", top-1 agreement {p['agreement']:.2f}%" if p.get("agreement") is not None else ""))
