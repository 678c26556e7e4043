"""Quality and parity measures on outputs given here: what counts as close, and what does not."""

from __future__ import annotations

import numpy as np

from edgekit.evaluate import compare, parity


def test_an_output_collapsed_to_zeros_is_not_a_perfect_match():
    rng = np.random.default_rng(0)
    ref = {"y": rng.standard_normal((16, 4, 8, 8)).astype(np.float32)}
    q = compare(ref, {"y": np.zeros_like(ref["y"])}, classifier=False, first_output="y")
    assert q.cosine == 0.0 and q.drop == 100.0
    # zeros against zeros are the same output
    zeros = {"y": np.zeros((4, 16), np.float32)}
    assert compare(zeros, {"y": np.zeros((4, 16), np.float32)}, classifier=False, first_output="y").drop == 0.0
    assert not parity(ref, {"y": np.zeros_like(ref["y"])}, "int8")["ok"]


def test_parity_passes_small_errors_and_classifiers_whose_decisions_agree():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((200, 10)).astype(np.float32) * 5
    logits[np.arange(200), rng.integers(0, 10, 200)] += 40.0  # a clear winner per sample
    ref = {"logits": logits}
    assert parity(ref, {"logits": logits + 0.01}, "int8")["ok"]
    # errors beyond 5e-2 x |output| that never change a decision and keep the direction
    noisy = {"logits": logits + rng.uniform(-4.0, 4.0, logits.shape).astype(np.float32)}
    p = parity(ref, noisy, "int8", classifier=True, first_output="logits")
    assert p["max_abs_error"] > p["allowed"] and p["agreement"] == 100.0 and p["cosine"] >= 0.98 and p["ok"]
    assert not parity(ref, noisy, "int8")["ok"]  # not a classifier: the error bound alone judges
    assert parity(ref, noisy, "int8", tolerance=5.0)["ok"]  # an exporter's wider bound
    flipped = logits.copy()
    flipped[:10] = -flipped[:10]  # 5 % of decisions change
    assert not parity(ref, {"logits": flipped}, "int8", classifier=True, first_output="logits")["ok"]


def test_int8_parity_of_a_dense_map_counts_elements_not_the_single_worst_one():
    """Two int8 kernels of one model (a .ort against its .onnx) round a few pixels of a detector's map apart."""
    rng = np.random.default_rng(0)
    ref = {"map": 1 / (1 + np.exp(-rng.standard_normal((4, 1, 64, 64)) * 4))}
    few = ref["map"].copy()
    few.reshape(-1)[rng.choice(few.size, 8, replace=False)] += 0.5  # 0.05 % of the pixels
    many = ref["map"].copy()
    many.reshape(-1)[rng.choice(many.size, 400, replace=False)] += 0.5  # 2.4 %
    p = parity(ref, {"map": few}, "int8")
    assert p["ok"] and p["max_abs_error"] > p["allowed"] and p["within_share"] >= 99.9
    q = parity(ref, {"map": many}, "int8")
    assert not q["ok"] and q["within_share"] < 99.9
    assert not parity(ref, {"map": few}, "fp32")["ok"]  # a float conversion must match everywhere
