"""The int8 choice for an objective, on measured numbers given here (no timing): each artifact form gets its own."""

from __future__ import annotations

import math
from types import SimpleNamespace

from edgekit.artifacts import warn_slower
from edgekit.choices import Format, Objective
from edgekit.evaluate import Latency
from edgekit.quantize.choose import Option, choose
from edgekit.runlog import RunLog

BASE_MS, BASE_SIZE = 1.0, 100_000
FLOAT = Option("float", 1.0, 100_000, 0.0, True, int8=False)


def _choose(options: list[Option], objective: Objective = Objective.BALANCED, **kw):
    return choose([*options, FLOAT], baseline_ms=BASE_MS, baseline_size=BASE_SIZE, objective=objective, max_drop=1.0, **kw)


def test_balanced_takes_the_fastest_within_the_size_goal_that_is_not_slower():
    whole = Option("static", 0.90, 27_000, 0.2, True)
    mixed = Option("mixed-onnx", 0.70, 31_000, 0.3, True)
    big_fast = Option("mixed-1x1", 0.50, 60_000, 0.1, True)  # faster, but 0.6x the size
    c = _choose([whole, mixed, big_fast])
    assert c.name == "mixed-onnx" and c.met_bound and not c.slower
    assert "fastest within 0.35x the fp32 size and not slower than fp32: 0.70x fp32 latency, 0.31x size" in c.why
    assert c.conflict.startswith("size and speed conflict: mixed-1x1 is faster (0.50x fp32) but 0.60x the size")


def test_balanced_never_ships_slower_than_float_and_says_when_int8_does_not_pay_off():
    c = _choose([Option("static", 1.30, 27_000, 0.0, True), Option("weight-only", 2.0, 26_000, 0.0, True)])
    assert c.name == "float" and not c.slower
    assert c.why.startswith("int8 does not pay off here: no int8 candidate within the 1-pt bound ran faster than fp32 (fastest: static at 1.30x)")
    assert "within 0.35x the size only slower candidates exist" in c.conflict


def test_balanced_without_a_small_enough_candidate_takes_the_smallest_that_is_not_slower():
    c = _choose([Option("mixed-a", 0.95, 60_000, 0.0, True), Option("mixed-b", 0.80, 80_000, 0.0, True),
                 Option("static", 1.2, 27_000, 0.0, True)])
    assert c.name == "mixed-a" and "smallest not slower than fp32 (nothing within 0.35x the fp32 size is as fast)" in c.why


def test_latency_takes_the_fastest_and_size_the_smallest_even_if_slower():
    opts = [Option("static", 0.90, 27_000, 0.2, True), Option("mixed", 0.60, 45_000, 0.3, True), Option("weight-only", 2.5, 26_000, 0.0, True)]
    assert _choose(opts, Objective.LATENCY).name == "mixed"
    size = _choose(opts, Objective.SIZE)
    assert size.name == "weight-only" and size.slower
    assert size.conflict.startswith("size and speed conflict: the smallest, weight-only (0.26x size), runs 2.50x fp32")


def test_within_the_noise_band_the_smaller_file_wins():
    c = _choose([Option("fast-big", 0.50, 30_000, 0.0, True), Option("near-small", 0.52, 27_000, 0.0, True)])
    assert c.name == "near-small"


def test_a_faster_candidate_that_loses_accuracy_is_named_not_chosen():
    c = _choose([Option("lossy", 0.30, 27_000, 3.0, False), Option("ok", 0.60, 28_000, 0.2, True)])
    assert c.name == "ok" and "lossy was faster but lost 3.00 pts" in c.why


def test_when_no_int8_candidate_is_accurate_the_most_accurate_is_kept_and_the_bound_reported():
    c = _choose([Option("a", 0.5, 27_000, 4.0, False), Option("b", 0.6, 27_000, 2.0, False), Option("c", 0.4, 27_000, math.nan, False)])
    assert c.name == "b" and not c.met_bound and "no int8 candidate met the 1-pt accuracy bound" in c.why


def test_an_ort_is_held_to_the_float_onnx_then_to_the_float_ort():
    # an .ort has no x86 blocked float kernels: its float model is 2.5x the .onnx's, and no int8 .ort beats the float .onnx
    float_ort = Option("float", 2.5, 100_000, 0.0, True, int8=False)
    opts = [Option("static", 1.10, 27_000, 0.0, True), Option("mixed-ort", 1.05, 40_000, 0.0, True), float_ort]
    c = choose(opts, baseline_ms=1.0, baseline_size=BASE_SIZE, objective=Objective.BALANCED, max_drop=1.0, label=" as .ort",
               fallback_ms=2.5)
    assert c.name == "static" and "not slower than the fp32 .ort" in c.why and "0.44x the fp32 .ort latency" in c.why


def _slower_weight_only_warning(*, calibrated: bool, objective: str, failed_bound: bool) -> str:
    art = SimpleNamespace(latency=Latency(2.0, 2.2, 2.0, 50), file="m.int8.onnx",
                          exported=SimpleNamespace(precision="int8", extra={"candidate": "weight-only"}, format=Format.ONNX))
    log = RunLog()
    warn_slower([art], Latency(1.0, 1.1, 1.0, 50), calibrated=calibrated, log=log, objective=objective, failed_bound=failed_bound)
    (line,) = log.notes
    return line


def test_a_slower_weight_only_artifact_is_explained_by_why_it_was_chosen():
    # no candidate met the accuracy bound: the most accurate shipped; the user did not ask for --objective size
    line = _slower_weight_only_warning(calibrated=False, objective="balanced", failed_bound=True)
    assert line.startswith("warning: m.int8.onnx runs at 2.00x the fp32 latency: its weight-only int8 weights are dequantized")
    assert "no int8 candidate met the accuracy bound and it was the most accurate" in line and "--objective" not in line
    assert line.endswith("calibration data (--data) gives a static int8 model that is fast")
    line = _slower_weight_only_warning(calibrated=True, objective="size", failed_bound=False)
    assert "(--objective size asked for the smallest file); --objective balanced keeps the file at least as fast as fp32" in line
    assert _slower_weight_only_warning(calibrated=True, objective="balanced", failed_bound=True).endswith("it was the most accurate)")
