"""Build int8 candidates, measure each as a user runs it, and keep the best one for the objective.

Never slower, never silently worse: every candidate is built, run over the evaluation data and
timed in a *plain* onnxruntime session (default options but the thread count: what
``onnxruntime.InferenceSession(path)`` gives any program) round-robin with the float model. No
artifact depends on a session option that only edgekit would set.

With calibration data the search also finds *mixed* candidates, int8 only where it pays off
(:mod:`edgekit.quantize.mixed`), for the ``.onnx`` and, when the run ships one, for the ``.ort``
(which has no x86 blocked-layout float kernels, so its best split differs). A mixed candidate that
misses the accuracy bound gives up its layers with the largest int8 error one batch at a time
(:func:`edgekit.quantize.layers.layer_errors`). The float model is a candidate too, so the result is
never slower than float unless ``--objective size`` asks for the smallest file. Each form gets its
own choice (:mod:`edgekit.quantize.choose`). Work past the time budget is skipped and listed.
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
from edgekit.choices import Objective, OrtTarget
from edgekit.data import Dataset
from edgekit.evaluate import Latency, measure_latencies, one_sample, run_dataset
from edgekit.export.compact import compact
from edgekit.onnx_model import weight_stats
from edgekit.quantize.candidates import CalibrationMethod, Candidate, Kind, build
from edgekit.quantize.choose import choose
from edgekit.quantize.outcome import CandidateResult, SearchResult
from edgekit.reference import Reference
from edgekit.signature import calibration_batch

__all__ = ["CandidateResult", "SearchResult", "SearchSettings", "search"]

#: share of the time budget after which no more whole-model candidates are built (the rest times them all)
WHOLE_SHARE = 0.7
#: rounds of the short timing round every candidate gets; contenders then get ``latency_runs`` rounds
SHORT_RUNS = 30
#: a candidate within this factor of the fastest (or of the float model) after the short round is timed again in full
CONTENDER_MARGIN = 1.2


@dataclass(frozen=True)
class SearchSettings:
    """How the search runs: the accuracy bound and objective, calibration, time and threads, the forms it judges."""

    max_drop: float  # largest accepted drop in points (agreement without labels)
    method: CalibrationMethod = CalibrationMethod.MINMAX
    threads: int = 1
    time_budget_s: float = 180.0
    exclude: tuple[str, ...] = ()  # node names left in float
    latency_runs: int = 200
    ort: bool = False  # the run ships an .ort too: time each candidate's .ort and choose the .ort's model by it
    objective: Objective = Objective.BALANCED
    mixed: bool = True  # search per-layer splits (needs calibration data)
    ort_target: OrtTarget = OrtTarget.ARM  # the CPU the .ort is built for (an .ort is timed as the exporter will build it)


@dataclass
class Workbench:
    """What building and checking candidates share within one search."""

    fp32_path: Path  # the float model (pre-processed, every node named)
    static_path: Path  # ... with the int8 stem rewrite, what static candidates quantize
    ref: Reference
    settings: SearchSettings
    workdir: Path
    calib_data: Dataset | None
    calib_batch: int
    scalar: frozenset[str]
    started: float = field(default_factory=time.monotonic)
    progress: Callable[[str, float], None] = lambda message, fraction: None
    ort_files: dict[Path, Path] = field(default_factory=dict)  # .onnx -> its .ort
    convs: bool = False  # the model has convolutions

    @property
    def cache(self) -> Path:
        """Calibration ranges, computed once and reused by every static candidate."""
        return self.workdir / f"calibration.{self.settings.method}.json"

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def deadline(self, share: float) -> float:
        return self.started + share * self.settings.time_budget_s

    def build(self, cand: Candidate, source: Path | None = None) -> Path:
        """Write ``cand``'s model (once) and return its path (the float candidate is the float model itself)."""
        if cand.kind is Kind.FLOAT:
            return self.fp32_path
        out = self.workdir / f"{cand.name}.onnx"
        if not out.is_file():
            src = source or (self.static_path if cand.kind is Kind.STATIC else self.fp32_path)
            build(src, cand, out, calib=self.calib_data, calib_batch=self.calib_batch, scalar_inputs=set(self.scalar),
                  method=self.settings.method, cache=self.cache, exclude=self.settings.exclude)
        return out

    def check(self, cand: Candidate, *, source: Path | None = None, split: str = "") -> CandidateResult:
        """:func:`check` on this bench (the per-layer search calls it without importing this module)."""
        return check(self, cand, source=source, split=split)

    def ort_of(self, onnx_path: Path) -> Path:
        """The ``.ort`` of a built ``.onnx`` (converted once), as the ``.ort`` exporter converts it."""
        if onnx_path not in self.ort_files:
            from edgekit.export.ort_mobile import convert_to_ort

            out_dir = self.workdir / "ort"
            out_dir.mkdir(exist_ok=True)
            self.ort_files[onnx_path] = convert_to_ort(onnx_path, out_dir, onnx_path.stem, scratch=self.workdir,
                                                       target=self.settings.ort_target)[0]
        return self.ort_files[onnx_path]


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
    """Build, evaluate and time each candidate (and the mixed ones) against ``ref``; choose per form.

    ``calib_data`` calibrates the static candidates (None: they are skipped). ``on_progress(message, fraction)`` reports.
    """
    inputs = ref.inputs
    static_path, rewrites = _static_source(fp32_path, workdir, settings.exclude) if calib_data is not None else (fp32_path, {})
    bench = Workbench(fp32_path, static_path, ref, settings, workdir, calib_data,
                      calibration_batch(inputs, calib_data.n if calib_data else 1), frozenset(s.name for s in inputs if not s.shape),
                      progress=on_progress or (lambda message, fraction: None),
                      convs=any(n.op_type in ("Conv", "ConvTranspose") for n in onnx.load(str(fp32_path), load_external_data=False).graph.node))
    results, mixed_record, phases = _check_all(bench, candidates)
    phases["candidates_s"] = bench.elapsed()
    baseline, baseline_ort = _time_all(bench, results)
    phases["timing_s"] = bench.elapsed() - phases["candidates_s"]
    bench.progress("int8: candidates measured", 1.0)
    result = _choose(results, baseline, baseline_ort, bench)
    result.static_rewrites, result.mixed = rewrites, mixed_record
    result.seconds = {k: round(v, 1) for k, v in phases.items()} | {"total_s": round(bench.elapsed(), 1)}
    return result


def _check_all(bench: Workbench, candidates: list[Candidate]) -> tuple[list[CandidateResult], dict[str, dict], dict[str, float]]:
    """Each candidate built and checked in order, the mixed ones right after the whole-model static ones (and the early ones:
    :attr:`Candidate.early`); the budget skips the rest."""
    settings = bench.settings
    results: list[CandidateResult] = []
    mixed_record: dict[str, dict] = {}
    phases: dict[str, float] = {}

    def mixed_now() -> None:
        first_static = next((r for r in results if r.candidate.kind is Kind.STATIC and r.status == "ok"), None)
        if first_static is None or not settings.mixed or "mixed_search_s" in phases:
            return
        from edgekit.quantize.mixed_search import mixed_candidates

        phases["whole_static_s"] = bench.elapsed()
        try:
            found, mixed_record[""] = mixed_candidates(bench, first_static)  # the first calibrated the ranges every split reuses
            results.extend(found)
        except Exception as e:  # noqa: BLE001 - the whole-model candidates still stand without the per-layer search
            mixed_record[""] = {"failed": _line(e)}
        phases["mixed_search_s"] = bench.elapsed() - phases["whole_static_s"]

    for i, cand in enumerate(candidates):
        if cand.kind is not Kind.STATIC and not cand.early:
            mixed_now()
        bench.progress(f"int8: candidate {cand.name}", 0.3 * i / max(1, len(candidates)))
        pointless = _pointless(cand, results, settings.objective, convs=bench.convs)
        if pointless:
            results.append(CandidateResult(cand, "skipped", pointless))
        elif results and bench.elapsed() > WHOLE_SHARE * settings.time_budget_s and cand.kind is not Kind.FLOAT:
            results.append(CandidateResult(cand, "skipped", f"search time budget of {settings.time_budget_s:.0f} s spent"))
        elif cand.kind is Kind.STATIC and bench.calib_data is None:
            results.append(CandidateResult(cand, "skipped", "needs calibration data (--data)"))
        else:
            results.append(check(bench, cand))
    mixed_now()
    return results, mixed_record.get("", {}), phases


def _pointless(cand: Candidate, done: list[CandidateResult], objective: Objective, *, convs: bool) -> str:
    """Why building ``cand`` cannot change the answer, given the static candidates already built ("" when it can)."""
    if not any(r.status == "ok" and r.candidate.kind is Kind.STATIC for r in done):
        return ""  # without static int8, these are the only int8 answers
    if cand.kind is Kind.WEIGHT_ONLY and objective is not Objective.SIZE:
        return ("its weights are dequantized on every run, so it is slower than fp32 in a plain session and only "
                "--objective size can take it; static int8 is as small")
    if cand.kind is Kind.DYNAMIC and cand.op_types is None and convs:
        return "static int8 (calibrated) runs convolutions faster and more accurately than ConvInteger; measured when there is no data"
    return ""


def check(bench: Workbench, cand: Candidate, *, source: Path | None = None, split: str = "") -> CandidateResult:
    """Build ``cand`` (if not built yet), run it over the evaluation data, convert its ``.ort``; sessions stay open for timing."""
    t0 = time.monotonic()
    settings, ref = bench.settings, bench.ref
    try:
        out = bench.build(cand, source)
        backend = OrtBackend(out, threads=settings.threads)
        outputs = run_dataset(backend, ref.eval_data, ref.inputs)
    except Exception as e:  # noqa: BLE001 - a candidate ORT cannot build or run is reported, not fatal
        return CandidateResult(cand, "failed", _line(e), seconds=time.monotonic() - t0, split=split)
    quality = ref.quality(outputs)
    model = onnx.load(str(out))
    # the artifact is stored compactly (edgekit.export.compact): compare candidates by the size they will have
    size = compact(model, rename=cand.kind is not Kind.FLOAT)[0].ByteSize()
    ort_backend, ort_size = None, 0
    if settings.ort:
        with contextlib.suppress(Exception):  # a failing .ort conversion is the exporter's to report; judge the .onnx
            ort_path = bench.ort_of(out)
            ort_backend, ort_size = OrtBackend(ort_path, threads=settings.threads), ort_path.stat().st_size
    accepted = bool(np.isfinite(quality.drop) and quality.drop <= settings.max_drop + 1e-9)
    reason = "" if accepted else f"loses {quality.drop:.2f} pts (bound {settings.max_drop:g})"
    return CandidateResult(cand, "ok", reason, path=out, size_bytes=size, quality=quality, stats=weight_stats(model), accepted=accepted,
                           seconds=time.monotonic() - t0, backend=backend, ort_backend=ort_backend, ort_size_bytes=ort_size, split=split)


def _time_all(bench: Workbench, results: list[CandidateResult]) -> tuple[Latency, Latency | None]:
    """Time every built candidate (and its .ort) with the float model in plain sessions, round-robin, so they share the CPU's load.

    Two rounds: a short one for all, then a full one for the contenders (:func:`_contenders`); a candidate that cannot win
    keeps its short-round numbers. The float candidate *is* the baseline as ``.onnx``; its ``.ort`` is timed like the
    others. Fills each candidate's latencies and closes its sessions; returns the baseline's latency and the float ``.ort``'s.
    """
    settings = bench.settings
    feeds = one_sample(bench.ref.eval_data, bench.ref.inputs)
    ok = [r for r in results if r.status == "ok"]
    timed: dict[str, tuple[Backend, dict[str, np.ndarray]]] = {"fp32": (OrtBackend(bench.fp32_path, threads=settings.threads), feeds)}
    timed.update({r.candidate.name: (r.backend, feeds) for r in ok if r.backend is not None and r.is_int8})
    timed.update({f"{r.candidate.name}.ort": (r.ort_backend, feeds) for r in ok if r.ort_backend is not None})
    remaining = max(10.0, settings.time_budget_s - bench.elapsed())
    bench.progress(f"int8: timing {len(timed)} models in plain sessions (short round)", 0.88)
    lat = measure_latencies(timed, runs=SHORT_RUNS, budget_s=0.3 * remaining, min_runs=10)
    _fill(ok, lat)
    keep = {"fp32"} | _contenders(ok, lat["fp32"], settings.objective)
    bench.progress(f"int8: timing {len(keep)} contenders in plain sessions", 0.93)
    lat |= measure_latencies({k: v for k, v in timed.items() if k in keep}, runs=settings.latency_runs, budget_s=0.6 * remaining)
    _fill(ok, lat)
    for r in ok:
        r.backend = r.ort_backend = None
    float_ort = next((r.ort_latency for r in ok if not r.is_int8), None)
    return lat["fp32"], float_ort


def _fill(ok: list[CandidateResult], lat: dict[str, Latency]) -> None:
    for r in ok:
        r.latency = lat["fp32"] if not r.is_int8 else lat.get(r.candidate.name)
        r.ort_latency = lat.get(f"{r.candidate.name}.ort")


def _contenders(ok: list[CandidateResult], baseline: Latency, objective: Objective) -> set[str]:
    """Timing keys of the candidates that could still win after a short round, in either form.

    What can win depends on the objective: near the fastest (latency), near the smallest (size), near or
    under the float model's latency (balanced: only those that are not slower compete). ``CONTENDER_MARGIN``
    covers what a short round on a busy CPU gets wrong. Only accurate candidates compete, unless none is
    (then the most accurate one is what ships).
    """
    keep: set[str] = set()
    for suffix, lat, size in (("", lambda r: r.latency, lambda r: r.size_bytes), (".ort", lambda r: r.ort_latency, lambda r: r.ort_size_bytes)):
        timed = [r for r in ok if lat(r) is not None and r.is_int8]
        field_ = [r for r in timed if r.accepted] or sorted(timed, key=lambda r: r.quality.drop if r.quality else np.inf)[:1]
        if not field_:
            continue
        fastest = min(lat(r).p50_ms for r in field_)
        smallest = min(size(r) for r in field_)
        for r in field_:
            p50 = lat(r).p50_ms
            near = {Objective.LATENCY: p50 <= CONTENDER_MARGIN * fastest, Objective.SIZE: size(r) <= 1.05 * smallest,
                    Objective.BALANCED: p50 <= CONTENDER_MARGIN * max(baseline.p50_ms, fastest)}[objective]
            if near or len(field_) == 1:
                keep.add(r.candidate.name + suffix)
    keep |= {f"{r.candidate.name}.ort" for r in ok if not r.is_int8 and r.ort_latency is not None}
    return keep


def _choose(results: list[CandidateResult], baseline: Latency, baseline_ort: Latency | None, bench: Workbench) -> SearchResult:
    settings = bench.settings
    size = bench.fp32_path.stat().st_size
    ok = [r for r in results if r.status == "ok" and r.latency is not None]
    if not any(r.is_int8 for r in ok):  # the float candidate alone is no answer to "int8": fp32 kept, exit 3 (README)
        reasons = "; ".join(f"{r.candidate.name}: {r.reason}" for r in results if r.is_int8) or "none was tried"
        return SearchResult(None, results, baseline, size, settings.max_drop, False, False, f"no int8 candidate could be built ({reasons})",
                            settings.objective)
    by_name = {r.candidate.name: r for r in ok}
    c = choose([r.option() for r in ok], baseline_ms=baseline.p50_ms, baseline_size=size, objective=settings.objective,
               max_drop=settings.max_drop)
    result = SearchResult(by_name[c.name], results, baseline, size, settings.max_drop, c.met_bound, c.slower, c.why, settings.objective,
                          c.conflict, baseline_ort_latency=baseline_ort)
    as_ort = [r for r in ok if r.ort_latency is not None]
    if as_ort:
        o = choose([r.option(ort=True) for r in as_ort], baseline_ms=baseline.p50_ms, baseline_size=size, objective=settings.objective,
                   max_drop=settings.max_drop, label=" as .ort", fallback_ms=baseline_ort.p50_ms if baseline_ort else None)
        result.chosen_ort, result.why_ort, result.ort_slower_than_fp32, result.conflict_ort = by_name[o.name], o.why, o.slower, o.conflict
    return result


def _static_source(fp32_path: Path, workdir: Path, exclude: tuple[str, ...]) -> tuple[Path, dict[str, int]]:
    """The float model static candidates quantize: with its image stem rewritten for int8 kernels, if it has one.

    ``space_to_depth_stem`` is exact, and measured faster in int8 only (ORT QDQ: ResNet-18 0.93x,
    MobileNetV2 0.90x); dynamic and weight-only candidates run their convs in float, so they keep the
    original graph, and so does a mixed candidate that keeps the stem float. Models stored with
    external data (over 2 GB) are left as they are.
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


def _line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else type(e).__name__)[:300]
