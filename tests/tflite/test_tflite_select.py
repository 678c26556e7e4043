"""Which int8 .tflite variant ships, on numbers given here (no TensorFlow, no timing).

Sizes are in bytes against a float .tflite of 1,000,000; latencies in ms against a float p50 of 2.0.
"""

from __future__ import annotations

import pytest

from edgekit.export.config import Objective
from edgekit.export.tflite_select import Variant, as_fast, select

FLOAT = Variant("float .tflite", size_bytes=1_000_000, p50_ms=2.0, base_ms=2.0, accurate=True, baseline=True)


def _v(name: str, size: int, ms: float, *, accurate: bool = True, deny: tuple[str, ...] = (), nodes: int = 0) -> Variant:
    return Variant(name, deny, tuple(f"n{i}" for i in range(nodes)), size_bytes=size, p50_ms=ms, base_ms=2.0, accurate=accurate)


def test_as_fast_allows_five_microseconds_and_nothing_more():
    assert as_fast(_v("a", 1, 2.0)) and as_fast(_v("b", 1, 2.005))
    assert not as_fast(_v("c", 1, 2.006))
    assert as_fast(Variant("tiny", p50_ms=0.027, base_ms=0.024))  # 3 µs over a 24 µs model is noise


def test_balanced_ships_the_fastest_small_variant_that_is_as_fast_as_float():
    int8 = _v("int8", 280_000, 2.2)  # small, slower
    mixed = _v("float HARD_SWISH", 290_000, 1.8, deny=("HARD_SWISH",))  # small, faster than float
    big = _v("float CONV_2D", 600_000, 1.5, deny=("CONV_2D",))  # fastest, but over 0.35x the size
    sel = select([int8, mixed, big], FLOAT, Objective.BALANCED)
    assert sel.chosen is mixed and sel.note == ""
    assert sel.why == ("float HARD_SWISH: the fastest accurate variant within 0.35x the float size that is as fast as the float .tflite "
                       "(0.90x the float .tflite's latency, 0.29x its size; objective balanced)")


def test_ties_go_to_the_smaller_file_then_to_fewer_float_ops():
    int8 = _v("int8", 280_000, 1.00)
    mixed = _v("float 3 slow nodes", 281_000, 0.99, nodes=3)  # 1 % faster (a tie) and 0.4 % bigger (a tie): fewer float ops win
    assert select([mixed, int8], FLOAT, Objective.BALANCED).chosen is int8
    smaller = _v("per-op", 250_000, 1.005, nodes=1)  # a tie on speed, clearly smaller
    assert select([mixed, int8, smaller], FLOAT, Objective.BALANCED).chosen is smaller
    faster = _v("faster", 290_000, 0.90, nodes=5)  # 10 % faster than the others: no tie
    assert select([mixed, int8, smaller, faster], FLOAT, Objective.BALANCED).chosen is faster


def test_balanced_when_nothing_is_as_fast_says_so_and_ships_the_fastest_small_variant():
    int8 = _v("int8", 280_000, 2.20)
    mixed = _v("float 29 slow nodes", 290_000, 2.06, nodes=29)
    sel = select([int8, mixed], FLOAT, Objective.BALANCED)
    assert sel.chosen is mixed
    assert sel.note == "no int8 variant is as fast as the float .tflite here (the fastest runs at 1.03x)"
    assert sel.why.startswith("float 29 slow nodes: no int8 variant is as fast") and "the fastest within 0.35x the float size" in sel.why


def test_balanced_with_speed_and_size_in_conflict_ships_the_smallest_variant_that_is_as_fast():
    int8 = _v("int8", 280_000, 2.5)  # small, slow
    half = _v("float CONV_2D", 500_000, 1.9, deny=("CONV_2D",))
    most = _v("float 40 nodes", 800_000, 1.7, nodes=40)
    sel = select([int8, half, most], FLOAT, Objective.BALANCED)
    assert sel.chosen is half
    assert sel.note.startswith("size and speed conflict: no variant within 0.35x the float size is as fast as the float .tflite; "
                               "shipping the smallest that is (0.50x the size")


def test_balanced_ships_the_float_tflite_when_no_variant_is_small_or_as_fast():
    sel = select([_v("float 60 nodes", 900_000, 2.3, nodes=60)], FLOAT, Objective.BALANCED)
    assert sel.chosen is FLOAT
    assert sel.note.endswith("; the .tflite keeps every layer float")


def test_latency_never_ships_a_slower_variant():
    int8, mixed = _v("int8", 280_000, 1.2), _v("mixed", 400_000, 1.0, nodes=4)
    assert select([int8, mixed], FLOAT, Objective.LATENCY).chosen is mixed
    slow = select([_v("int8", 280_000, 2.4)], FLOAT, "latency")
    assert slow.chosen is FLOAT and slow.why.startswith("the float .tflite: no int8 variant is as fast")


def test_size_ships_the_smallest_accurate_variant_and_says_when_it_is_slower():
    int8, mixed = _v("int8", 280_000, 2.4), _v("mixed", 400_000, 1.0, nodes=4)
    sel = select([int8, mixed], FLOAT, Objective.SIZE)
    assert sel.chosen is int8
    assert sel.note == "the smallest variant runs at 1.20x the float .tflite (objective size)"


@pytest.mark.parametrize("objective", list(Objective))
def test_inaccurate_and_unbuilt_variants_never_ship(objective):
    wrong = _v("int8", 250_000, 1.0, accurate=False)
    broken = Variant("float DIV", ("DIV",), error="TFLite's quantizer failed: boom")
    ok = _v("float 8 most inaccurate", 300_000, 1.5, nodes=8)
    assert select([wrong, broken, ok], FLOAT, objective).chosen is ok
    sel = select([wrong, broken], FLOAT, objective)
    assert sel.chosen is FLOAT
    assert sel.note == "no int8 variant passed parity with the float model; the .tflite keeps every layer float"
    assert select([broken], FLOAT, objective).why == "the float .tflite: no int8 variant could be built"


def test_the_manifest_entry_of_a_variant_reads_like_the_numbers():
    d = _v("float MUL", 300_000, 1.5, deny=("MUL",), nodes=2).to_dict(1_000_000)
    assert d == {"name": "float MUL", "origin": "", "deny_ops": ["MUL"], "deny_nodes": 2, "size_bytes": 300_000, "size_ratio": 0.3,
                 "latency_ratio": 0.75, "p50_ms": 1.5, "accurate": True}
    assert Variant("x", error="boom").to_dict(1) == {"name": "x", "origin": "", "deny_ops": [], "deny_nodes": 0, "error": "boom"}
