"""Measure int8 candidates on this CPU and keep the fastest one that meets the accuracy bound.

Never slower, never silently worse: every candidate is built, run over the evaluation data and
timed with the same settings as the fp32 baseline. When the run ships an ``.ort`` too, each
candidate's ``.ort`` is converted and timed as well, and the ``.ort`` gets the candidate that is
fastest *as .ort*: an ``.ort`` is not re-optimized at load, so a weight-only model that is as fast
as fp32 as ``.onnx`` (its weights are folded to float at load) dequantizes on every run as
``.ort``, where a static QOperator model may win. Each artifact is the best int8 for its form.
The search is bounded in time; candidates not reached are listed as skipped, with the reason.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from device_agent.runtime import Backend, OrtBackend
from edgekit.data import Dataset
from edgekit.evaluate import Latency, Quality, measure_latencies, one_sample, run_dataset
from edgekit.export.compact import compact
from edgekit.onnx_model import WeightStats, weight_stats
from edgekit.quantize.candidates import CalibrationMethod, Candidate, Kind, build
from edgekit.reference import Reference
from edgekit.signature import calibration_batch

__all__ = ["CandidateResult", "SearchResult", "SearchSettings", "search"]

#: latency differences below this share of the baseline are noise on a shared CPU
NOISE = 0.05
#: a candidate that stores less than this share of its weights as int8 is not an int8 model
MIN_QUANTIZED_SHARE = 0.5
#: session config an artifact needs at load time, by candidate kind
#: (weight-only int8 is folded back to float at load; so are the conv weights a dynamic candidate stores weight-only:
#: without this, onnxruntime keeps their DequantizeLinear nodes and runs them on every inference)
SESSION_CONFIG = {Kind.WEIGHT_ONLY: {"session.disable_quant_qdq": "1"}, Kind.DYNAMIC: {"session.disable_quant_qdq": "1"}}


@dataclass
class CandidateResult:
    candidate: Candidate
    status: str  # ok | failed | skipped
    reason: str = ""
    path: Path | None = None
    size_bytes: int = 0
    latency: Latency | None = None
    quality: Quality | None = None
    stats: WeightStats | None = None
    accepted: bool = False
    seconds: float = 0.0
    backend: OrtBackend | None = field(default=None, repr=False)  # kept until the interleaved timing
    ort_backend: OrtBackend | None = field(default=None, repr=False)
    ort_latency: Latency | None = None
    ort_size_bytes: int = 0

    @property
    def session_config(self) -> dict[str, str]:
        return dict(SESSION_CONFIG.get(self.candidate.kind, {}))

    def to_dict(self, baseline: Latency | None = None, baseline_size: int | None = None) -> dict:
        d: dict = {"name": self.candidate.name, "status": self.status, **self.candidate.params()}
        if self.reason:
            d["reason"] = self.reason
        if self.status == "ok":
            d["size_bytes"] = self.size_bytes
            if baseline_size:
                d["size_ratio"] = round(self.size_bytes / baseline_size, 4)
            d["latency"] = self.latency.to_dict() if self.latency else None
            if baseline and self.latency:
                d["latency_ratio"] = round(self.latency.p50_ms / baseline.p50_ms, 4)
            if self.ort_latency:
                d["ort_size_bytes"] = self.ort_size_bytes
                d["ort_latency"] = self.ort_latency.to_dict()
                if baseline:
                    d["ort_latency_ratio"] = round(self.ort_latency.p50_ms / baseline.p50_ms, 4)
            d["quality"] = self.quality.to_dict() if self.quality else None
            d["quantized_share"] = round(self.stats.quantized_share, 4) if self.stats else None
            d["accepted"] = self.accepted
            d["build_and_check_s"] = round(self.seconds, 2)
        return d


@dataclass
class SearchResult:
    chosen: CandidateResult | None
    results: list[CandidateResult]
    baseline_latency: Latency
    baseline_size: int
    max_drop: float
    met_bound: bool
    slower_than_fp32: bool
    why: str
    notes: list[str] = field(default_factory=list)
    #: the candidate the .ort is converted from (None: the .ort is not shipped, or no candidate made one)
    chosen_ort: CandidateResult | None = None
    why_ort: str = ""
    ort_slower_than_fp32: bool = False
    #: exact graph rewrites the static candidates were quantized with (edgekit.onnx_rewrites)
    static_rewrites: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        ort = {}
        if self.chosen_ort is not None:
            ort = {"chosen_ort": self.chosen_ort.candidate.name, "why_ort": self.why_ort, "ort_slower_than_fp32": self.ort_slower_than_fp32}
        return {
            "chosen": self.chosen.candidate.name if self.chosen else None,
            "why": self.why,
            **ort,
            "met_accuracy_bound": self.met_bound,
            "slower_than_fp32": self.slower_than_fp32,
            "max_drop_pts": self.max_drop,
            **({"static_rewrites": self.static_rewrites} if self.static_rewrites else {}),
            "baseline": {"size_bytes": self.baseline_size, "latency": self.baseline_latency.to_dict()},
            "candidates": [r.to_dict(self.baseline_latency, self.baseline_size) for r in self.results],
        }


@dataclass(frozen=True)
class SearchSettings:
    """How the search runs: the accuracy bound, calibration, time and threads, and which forms it judges candidates in."""

    max_drop: float  # largest accepted drop in points (agreement without labels)
    method: CalibrationMethod = CalibrationMethod.MINMAX
    threads: int = 1
    time_budget_s: float = 180.0
    exclude: tuple[str, ...] = ()  # node names left in float
    latency_runs: int = 200
    ort: bool = False  # the run ships an .ort too: time each candidate's .ort and choose the .ort's model by it


@dataclass(frozen=True)
class _Build:
    """What building one candidate needs besides the candidate itself."""

    workdir: Path
    calib_data: Dataset | None
    calib_batch: int
    scalar: frozenset[str]  # scalar inputs (no sample axis)
    cache: Path  # calibration ranges, computed once and reused by every static candidate


def search(
    fp32_path: Path,
    candidates: list[Candidate],
    ref: Reference,
    *,
    calib_data: Dataset | None,
    settings: SearchSettings,
    workdir: Path,
    on_progress: Callable[[str, float], None] | None = None,
) -> SearchResult:
    """Build, evaluate and time each candidate against ``ref``; choose. ``on_progress(message, fraction)`` reports.

    ``calib_data`` calibrates the static candidates (None: they are skipped).
    """
    started = time.monotonic()
    progress = on_progress or (lambda message, fraction: None)
    inputs = ref.inputs
    calib_batch = calibration_batch(inputs, calib_data.n if calib_data else 1)
    build = _Build(workdir, calib_data, calib_batch, frozenset(s.name for s in inputs if not s.shape),
                   workdir / f"calibration.{settings.method}.json")
    static_path, rewrites = _static_source(fp32_path, workdir, settings.exclude) if calib_data is not None else (fp32_path, {})
    results: list[CandidateResult] = []
    for i, cand in enumerate(candidates):
        progress(f"int8 candidate {cand.name}", i / len(candidates))
        elapsed = time.monotonic() - started
        if results and elapsed > settings.time_budget_s:
            results.append(CandidateResult(cand, "skipped", f"search time budget of {settings.time_budget_s:.0f} s spent"))
            continue
        if cand.kind is Kind.STATIC and calib_data is None:
            results.append(CandidateResult(cand, "skipped", "needs calibration data (--data)"))
            continue
        results.append(_try(cand, static_path if cand.kind is Kind.STATIC else fp32_path, ref, settings, build))
    progress("timing int8 candidates against fp32", 0.9)
    remaining = max(5.0, settings.time_budget_s - (time.monotonic() - started))
    baseline = _time_all(fp32_path, results, ref, settings, budget_s=min(60.0, remaining))
    progress("int8 candidates measured", 1.0)
    result = _choose(results, baseline, fp32_path.stat().st_size, settings.max_drop)
    as_ort = [r for r in results if r.status == "ok" and r.ort_latency is not None]
    if as_ort and result.chosen is not None:
        ort = _choose(as_ort, baseline, fp32_path.stat().st_size, settings.max_drop, form=_AS_ORT)
        result.chosen_ort, result.why_ort, result.ort_slower_than_fp32 = ort.chosen, ort.why, ort.slower_than_fp32
    result.static_rewrites = rewrites
    return result


def _time_all(fp32_path: Path, results: list[CandidateResult], ref: Reference, settings: SearchSettings, *, budget_s: float) -> Latency:
    """Time every built candidate (and its .ort) with the fp32 baseline, round-robin so they share the same CPU load.

    Fills each candidate's latencies and closes its sessions; returns the baseline's latency.
    """
    feeds = one_sample(ref.eval_data, ref.inputs)
    ok = [r for r in results if r.status == "ok"]
    timed: dict[str, tuple[Backend, dict[str, np.ndarray]]] = {"fp32": (OrtBackend(fp32_path, threads=settings.threads), feeds)}
    timed.update({r.candidate.name: (r.backend, feeds) for r in ok if r.backend is not None})
    timed.update({f"{r.candidate.name}.ort": (r.ort_backend, feeds) for r in ok if r.ort_backend is not None})
    lat = measure_latencies(timed, runs=settings.latency_runs, budget_s=budget_s)
    for r in ok:
        r.latency = lat[r.candidate.name]
        r.ort_latency = lat.get(f"{r.candidate.name}.ort")
        r.backend = r.ort_backend = None
    return lat["fp32"]


def _static_source(fp32_path: Path, workdir: Path, exclude: tuple[str, ...]) -> tuple[Path, dict[str, int]]:
    """The float model static candidates quantize: with its image stem rewritten for int8 kernels, if it has one.

    ``space_to_depth_stem`` is exact, and measured faster in int8 only (ORT QDQ: ResNet-18 0.93x,
    MobileNetV2 0.90x); dynamic and weight-only candidates run their convs in float, so they keep the
    original graph. Models stored with external data (over 2 GB) are left as they are.
    """
    from edgekit.onnx_rewrites import space_to_depth_stem

    if fp32_path.stat().st_size > 2**31 - 2**26:
        return fp32_path, {}
    rewritten, n = space_to_depth_stem(onnx.load(str(fp32_path)), skip=tuple(exclude))
    if not n:
        return fp32_path, {}
    out = workdir / f"{fp32_path.stem}.static-source.onnx"
    onnx.save(rewritten, str(out))
    return out, {"space_to_depth_stem": n}


def _try(cand: Candidate, fp32_path: Path, ref: Reference, settings: SearchSettings, build_with: _Build) -> CandidateResult:
    t0 = time.monotonic()
    out = build_with.workdir / f"{cand.name}.onnx"
    try:
        build(fp32_path, cand, out, calib=build_with.calib_data, calib_batch=build_with.calib_batch, scalar_inputs=set(build_with.scalar),
              method=settings.method, cache=build_with.cache, exclude=settings.exclude)
        backend = OrtBackend(out, threads=settings.threads, session_config=SESSION_CONFIG.get(cand.kind))
        outputs = run_dataset(backend, ref.eval_data, ref.inputs)
    except Exception as e:  # noqa: BLE001 - a candidate ORT cannot build or run is reported, not fatal
        return CandidateResult(cand, "failed", _line(e), seconds=time.monotonic() - t0)
    quality = ref.quality(outputs)
    model = onnx.load(str(out))
    stats = weight_stats(model)
    # the artifact is stored compactly (edgekit.export.compact): compare candidates by the size they will have
    size = compact(model)[0].ByteSize()
    ort_backend, ort_size = None, 0
    if settings.ort:
        with contextlib.suppress(Exception):  # a failing .ort conversion is the exporter's to report; judge the .onnx
            ort_path = _ort_of(out, build_with.workdir)
            ort_backend, ort_size = OrtBackend(ort_path, threads=settings.threads), ort_path.stat().st_size
    accepted = bool(np.isfinite(quality.drop) and quality.drop <= settings.max_drop + 1e-9)
    reason = "" if accepted else f"loses {quality.drop:.2f} pts (bound {settings.max_drop:g})"
    if stats.quantized_share < MIN_QUANTIZED_SHARE:
        # never pass a mostly-fp32 model off as int8
        accepted, reason = False, f"only {stats.quantized_share:.0%} of weights int8"
    return CandidateResult(cand, "ok", reason, path=out, size_bytes=size, quality=quality, stats=stats, accepted=accepted,
                           seconds=time.monotonic() - t0, backend=backend, ort_backend=ort_backend, ort_size_bytes=ort_size)


def _ort_of(onnx_path: Path, workdir: Path) -> Path:
    from edgekit.export.ort_mobile import convert_to_ort

    out_dir = workdir / "ort"
    out_dir.mkdir(exist_ok=True)
    return convert_to_ort(onnx_path, out_dir, onnx_path.stem)[0]


@dataclass(frozen=True)
class _Form:
    """How candidates are judged for one artifact form: its latency and its size."""

    label: str
    latency: Callable[[CandidateResult], float]
    size: Callable[[CandidateResult], int]


_AS_ONNX = _Form("", lambda r: r.latency.p50_ms, lambda r: r.size_bytes)
_AS_ORT = _Form(" as .ort", lambda r: r.ort_latency.p50_ms, lambda r: r.ort_size_bytes)


def _choose(results: list[CandidateResult], baseline: Latency, baseline_size: int, max_drop: float,
            form: _Form = _AS_ONNX) -> SearchResult:
    ok = [r for r in results if r.status == "ok"]
    if not ok:
        reasons = "; ".join(f"{r.candidate.name}: {r.reason}" for r in results)
        return SearchResult(None, results, baseline, baseline_size, max_drop, False, False, f"no int8 candidate could be built ({reasons})")
    lat, size = form.latency, form.size
    accepted = [r for r in ok if r.accepted]
    if accepted:
        best = min(accepted, key=lambda r: (lat(r), size(r)))
        # latency differences within the noise band are not real: prefer the smaller file among them
        near = [r for r in accepted if lat(r) <= lat(best) * (1 + NOISE)]
        best = min(near, key=lambda r: (size(r), lat(r)))
        ratio = lat(best) / baseline.p50_ms
        slower = ratio > 1 + NOISE
        faster_rejected = [r for r in ok if not r.accepted and lat(r) < lat(best)]
        why = (f"fastest{form.label} of {len(accepted)} candidate(s) within the {max_drop:g}-pt bound (smallest within {NOISE:.0%} "
               f"of the fastest): {ratio:.2f}x fp32 latency")
        if faster_rejected:
            f = faster_rejected[0]
            why += f"; {f.candidate.name} was faster but lost {f.quality.drop:.2f} pts"
        if slower:
            why += (f". Every accurate int8 candidate ran slower{form.label} than fp32 on this CPU "
                    f"(best {ratio:.2f}x): this CPU/model gains size, not speed, from int8 here")
        return SearchResult(best, results, baseline, baseline_size, max_drop, True, slower, why)
    best = min(ok, key=lambda r: (r.quality.drop, lat(r)))
    why = (f"no candidate met the {max_drop:g}-pt accuracy bound; kept the most accurate, {best.candidate.name}, "
           f"which loses {best.quality.drop:.2f} pts. Try --max-drop, more/representative --data, "
           "--calibration entropy|percentile, or --exclude the most sensitive nodes")
    return SearchResult(best, results, baseline, baseline_size, max_drop, False, lat(best) > baseline.p50_ms * (1 + NOISE), why)


def _line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else type(e).__name__)[:300]
