"""The int8 search's choice, on measured numbers given here (no timing): each artifact form gets its fastest."""

from __future__ import annotations

from edgekit.evaluate import Latency, Quality
from edgekit.quantize.candidates import STATIC_CANDIDATES, WEIGHT_ONLY
from edgekit.quantize.search import _AS_ONNX, _AS_ORT, CandidateResult, _choose  # noqa: PLC2701

BASE = Latency(1.0, 1.0, 1.0, 200)


def _result(cand, onnx_ms: float, ort_ms: float, size: int, ort_size: int, drop: float = 0.0) -> CandidateResult:
    return CandidateResult(cand, "ok", size_bytes=size, latency=Latency(onnx_ms, onnx_ms, onnx_ms, 200),
                           quality=Quality(None, None, 1.0, 0.0, drop), accepted=drop <= 1.0,
                           ort_latency=Latency(ort_ms, ort_ms, ort_ms, 200), ort_size_bytes=ort_size)


def test_the_ort_gets_the_candidate_fastest_as_ort_not_the_onnx_winner():
    # weight-only: as fast as fp32 as .onnx (weights folded at load), 2x as .ort (dequantized every run)
    weight_only = _result(WEIGHT_ONLY, 0.98, 2.0, 40_000, 50_000)
    qop = _result(STATIC_CANDIDATES[2], 1.20, 1.05, 42_000, 55_000)
    qdq = _result(STATIC_CANDIDATES[0], 1.30, 1.30, 45_000, 58_000)
    as_onnx = _choose([weight_only, qop, qdq], BASE, 160_000, 1.0, form=_AS_ONNX)
    as_ort = _choose([weight_only, qop, qdq], BASE, 160_000, 1.0, form=_AS_ORT)
    assert as_onnx.chosen is weight_only and not as_onnx.slower_than_fp32
    assert as_ort.chosen is qop and "fastest as .ort" in as_ort.why


def test_within_the_noise_band_the_smaller_file_of_that_form_wins():
    fast_big = _result(STATIC_CANDIDATES[0], 0.50, 0.50, 50_000, 60_000)
    near_small = _result(STATIC_CANDIDATES[1], 0.52, 0.52, 45_000, 61_000)  # smaller .onnx, larger .ort
    assert _choose([fast_big, near_small], BASE, 160_000, 1.0, form=_AS_ONNX).chosen is near_small
    assert _choose([fast_big, near_small], BASE, 160_000, 1.0, form=_AS_ORT).chosen is fast_big


def test_a_faster_candidate_that_loses_accuracy_is_named_not_chosen():
    lossy = _result(STATIC_CANDIDATES[3], 0.30, 0.30, 40_000, 50_000, drop=3.0)
    ok = _result(STATIC_CANDIDATES[0], 0.60, 0.60, 45_000, 55_000)
    res = _choose([lossy, ok], BASE, 160_000, 1.0, form=_AS_ORT)
    assert res.chosen is ok and f"{lossy.candidate.name} was faster but lost 3.00 pts" in res.why
