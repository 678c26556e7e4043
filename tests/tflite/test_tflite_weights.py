"""Per-channel or per-tensor weights for a full-integer .tflite: both converted, measured, the smaller kept only if as good.

The rule is tested on numbers given here (no timing); two conversions show it on real models: the
digits CNN, where per-tensor is as accurate and ships, and a depthwise model whose channels have
weight ranges 1000x apart, where per-tensor rounds a channel's weights away and per-channel stays.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from device_agent.contract.manifest import load_manifest
from edgekit.compress import CompressOptions, compress
from edgekit.evaluate import Latency, Quality
from edgekit.export.tflite_weights import WeightsCandidate, choose
from edgekit.pipeline import StepSpec

ART = "digits.int8.tflite"


def _cand(weights: str, size: int, drop: float = 0.0, ms: float = 1.0, *, rms: float = 0.05, parity_ok: bool = True,
          error: str = "") -> WeightsCandidate:
    if error:
        return WeightsCandidate(weights, None, error=error)
    return WeightsCandidate(weights, None, size, quality=Quality(None, None, 1.0, 0.1, drop), latency=Latency(ms, ms, ms, 200),
                            parity={"ok": parity_ok, "max_abs_error": 0.5, "allowed": 0.2, "cosine": 0.999, "agreement": 97.0},
                            rms_error=rms)


def test_per_tensor_ships_when_it_ties_on_accuracy_and_speed():
    pc, pt = _cand("per-channel", 46_920), _cand("per-tensor", 44_480, drop=0.15, ms=1.04, rms=0.06)
    best, why = choose([pc, pt], n_eval=540)  # one sample of 540 is 0.19 pts
    assert best is pt
    assert "2,440 bytes (5.2%) smaller" in why and "tie 0.19" in why and "RMS error 1.20x per-channel's" in why


def test_per_channel_stays_when_per_tensor_loses_more_than_one_sample():
    pc, pt = _cand("per-channel", 46_920, drop=0.2), _cand("per-tensor", 44_480, drop=0.6)
    best, why = choose([pc, pt], n_eval=540)
    assert best is pc
    assert why == "per-channel: per-tensor loses 0.60 pts against 0.20 (more than one evaluation sample, 0.19 pts)"
    # with many samples the tie shrinks to its floor of 0.1 pt
    assert choose([_cand("per-channel", 10), _cand("per-tensor", 9, drop=0.11)], n_eval=100_000)[0].weights == "per-channel"


@pytest.mark.parametrize(("pt", "fragment"), [
    (_cand("per-tensor", 44_480, ms=1.06), "runs at 1.06x per-channel's latency"),
    (_cand("per-tensor", 44_480, rms=0.08), "is 1.60x as far from the float model (RMS error 0.08 against 0.05; at most 1.25x)"),
    (_cand("per-tensor", 44_480, parity_ok=False), "fails parity with the float model (max abs error 0.5, allowed 0.2, cosine 0.9990, "
                                                   "top-1 agreement 97.00%)"),
    (_cand("per-tensor", 0, error="TFLiteConverter failed: boom"), "could not be built (TFLiteConverter failed: boom)"),
    (_cand("per-tensor", 50_000), "is not smaller"),
])
def test_each_reason_to_keep_per_channel_is_said(pt, fragment):
    best, why = choose([_cand("per-channel", 46_920), pt], n_eval=540)
    assert best.weights == "per-channel"
    assert fragment in why


def test_when_per_channel_fails_parity_a_per_tensor_that_passes_ships_even_if_less_accurate():
    pc, pt = _cand("per-channel", 46_920, parity_ok=False), _cand("per-tensor", 44_480, drop=2.0, rms=0.2)
    best, why = choose([pc, pt], n_eval=540)
    assert best is pt
    assert why.startswith("per-tensor: per-channel fails parity with the float model (max abs error 0.5, allowed 0.2")
    assert why.endswith("; per-tensor passes it")


def test_digits_ships_per_tensor_and_the_manifest_shows_both_candidates(digits, tmp_path):
    out = compress(digits["model"], digits["eval"], CompressOptions(steps=[StepSpec("int8", {})], formats=("tflite",), output=tmp_path / "auto")).output
    art = load_manifest(out, verify_files=True).artifact(ART)
    choice = art.extra["tflite"]["weights_choice"]
    assert art.extra["tflite"]["weights"] == choice["chosen"] == "per-tensor"
    by = {c["weights"]: c for c in choice["candidates"]}
    assert set(by) == {"per-channel", "per-tensor"}
    assert art.size_bytes == by["per-tensor"]["size_bytes"] < by["per-channel"]["size_bytes"] - 2000  # 24 B per channel
    for c in by.values():
        assert c["parity"]["ok"] and c["quality"]["accuracy"] > 97 and c["latency"]["runs"] >= 20
    assert abs(by["per-tensor"]["quality"]["drop_pts"] - by["per-channel"]["quality"]["drop_pts"]) <= 0.19
    # the shipped file is the per-tensor one: a single scale on every tensor
    from ai_edge_litert.interpreter import Interpreter

    details = Interpreter(model_path=str(out / ART)).get_tensor_details()
    assert max(len(d["quantization_parameters"]["scales"]) for d in details) == 1
    assert art.extra["tflite"]["stripped"]["bytes"] == art.size_bytes  # the facts are the shipped file's


def _depthwise_model() -> onnx.ModelProto:
    """x[N, 2, 8, 8] → depthwise 3x3 → 1x1 conv → y[N, 4, 8, 8], with depthwise weight ranges 100x apart.

    Channel 0 averages with small weights; channel 1 takes a horizontal difference with weights 100x
    larger, of an input that changes slowly across the row, so both outputs are of a size (as after
    a folded BatchNorm). Per-tensor scales, set by channel 1, leave channel 0's weights two or three
    int8 steps.
    """
    rng = np.random.default_rng(0)
    dw = np.zeros((2, 1, 3, 3), np.float32)
    dw[0] = rng.standard_normal((3, 3)) * 0.01
    dw[1, 0, 1, 0], dw[1, 0, 1, 1] = 1.0, -1.0
    pw = np.array([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 0.5]], np.float32).reshape(4, 2, 1, 1)
    inits = [numpy_helper.from_array(dw, "dw"), numpy_helper.from_array(pw, "pw"),
             numpy_helper.from_array(np.zeros(2, np.float32), "dwb"), numpy_helper.from_array(np.zeros(4, np.float32), "pwb")]
    nodes = [helper.make_node("Conv", ["x", "dw", "dwb"], ["h"], name="depthwise", group=2, pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["h", "pw", "pwb"], ["y"], name="pointwise")]
    graph = helper.make_graph(nodes, "dw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgekit-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _depthwise_data(n: int = 64) -> np.ndarray:
    r = np.random.default_rng(1)
    x = np.empty((n, 2, 8, 8), np.float32)
    x[:, 0] = r.random((n, 8, 8))
    ramp = np.linspace(0, 0.3, 8, dtype=np.float32)  # rows that rise or fall slowly, a little noise
    x[:, 1] = r.random((n, 8, 1)) * 0.5 + ramp * r.choice([-1, 1], (n, 8, 1)) + 0.01 * r.standard_normal((n, 8, 8))
    return x


def test_a_depthwise_model_keeps_per_channel_and_says_what_per_tensor_lost(tmp_path):
    path = tmp_path / "dw.onnx"
    onnx.save(_depthwise_model(), str(path))
    np.savez(tmp_path / "data.npz", x=_depthwise_data())
    out = compress(path, tmp_path / "data.npz", CompressOptions(steps=[StepSpec("int8", {})], formats=("tflite",), output=tmp_path / "out")).output
    art = load_manifest(out).artifact("dw.int8.tflite")
    choice = art.extra["tflite"]["weights_choice"]
    assert art.extra["tflite"]["weights"] == choice["chosen"] == "per-channel"
    by = {c["weights"]: c for c in choice["candidates"]}
    assert by["per-tensor"]["rms_error_vs_float"] > 1.25 * by["per-channel"]["rms_error_vs_float"]
    assert choice["why"].startswith("per-channel: per-tensor is ") and "as far from the float model" in choice["why"]
    assert art.size_bytes == by["per-channel"]["size_bytes"] > by["per-tensor"]["size_bytes"]  # smaller, not chosen
