import math
import threading

import numpy as np
import pytest

from device_agent.contract.manifest import FeatureProfile, TensorSpec
from device_agent.contract.protocol import TELEMETRY_MAX_BYTES, encode
from device_agent.telemetry import FeatureTracker, LatencySketch, Metrics, Window, select_features
from device_agent.telemetry import window as telemetry


def feature(name="x[0]", edges=(0.0, 1.0, 2.0, 3.0), index=0, axis=1, input="x"):
    return FeatureProfile(input, axis, index, name, tuple(edges), tuple([1] * (len(edges) - 1)), 0, 3, 1, 1, 0)


def test_sketch_quantiles_within_one_percent():
    rng = np.random.default_rng(0)
    values = rng.lognormal(-6, 1, 20_000)
    s = LatencySketch()
    for v in values:
        s.add(float(v))
    for q in (0.5, 0.95, 0.99):
        assert s.quantile(q) == pytest.approx(np.quantile(values, q), rel=0.02)
    assert s.max == values.max() and s.count == 20_000
    assert len(s.buckets) < 1100


def test_feature_counts_for_known_inputs():
    tr = FeatureTracker([feature(), feature("x[1]", index=1, edges=(0.0, 10.0))])
    x = np.array([[[-1.0, 0.0, 0.5, 1.0, 2.5, 3.0, 4.0, np.nan]], [[10.0] * 8]], np.float32)  # [2, 1, 8]
    x = np.concatenate([x, np.full((2, 1, 8), 5.0, np.float32)], axis=1)  # [2, 2, 8]: channel 1 all 5.0
    tr.add({"x": x})
    (f0, f1), samples = tr.take()
    assert samples == 2
    # channel 0: -1 under; 0, 0.5 -> bin 0; 1 -> bin 1; 2.5, 3.0 -> bin 2 (last bin closed); 4, 10 x8 over; nan
    assert f0.counts == [2, 1, 2] and f0.under == 1 and f0.over == 9 and f0.nan == 1 and f0.n == 16
    assert f0.min == -1.0 and f0.max == 10.0
    finite = np.array([-1, 0, 0.5, 1, 2.5, 3, 4] + [10] * 8)
    assert f0.mean == pytest.approx(finite.mean(), rel=1e-5) and f0.std == pytest.approx(finite.std(), rel=1e-5)
    assert f1.counts == [16] and f1.under == f1.over == f1.nan == 0
    (g0, _), _ = tr.take()
    assert g0.n == 0 and g0.mean is None  # reset after take


def test_large_inputs_are_strided_per_sample():
    tr = FeatureTracker([feature(edges=(0.0, 1.0))], max_values_per_feature=100)
    tr.add({"x": np.zeros((3, 1, 1000), np.float32)})
    (f,), _ = tr.take()
    per_sample = f.n // 3
    assert f.n == 3 * per_sample and 50 <= per_sample <= 100 and f.counts == [f.n]  # at most the limit, at least half of it


def test_image_striding_visits_every_column_of_a_row():
    """A stride sharing a factor with the width would sample the same few columns of every row."""
    from device_agent.telemetry.features import _stride

    for width in (224, 256, 160, 7):
        step = _stride(width * width, 256, width)
        assert width * width // step <= 256 and math.gcd(step, width) == 1
        assert len({(k * step) % width for k in range(-(-width * width // step))}) == min(width, -(-width * width // step))
    # the left half of a 224x224 channel is 0, the right half 1: the sample must see both halves equally
    tr = FeatureTracker([feature(edges=(0.0, 0.5, 1.0))], max_values_per_feature=256)
    img = np.zeros((1, 1, 224, 224), np.float32)
    img[..., 112:] = 1.0
    tr.add({"x": img})
    (f,), _ = tr.take()
    assert abs(f.counts[0] - f.counts[1]) <= 0.1 * f.n


def test_window_batches_pending_inputs_and_resets():
    w = Window(FeatureTracker([feature()]), clock=iter([0.0, 10.0, 20.0]).__next__)
    for i in range(5):
        w.observe({"x": np.full((2, 1, 4), float(i % 3), np.float32)})
        w.record(0.001 * (i + 1))
    w.record(None, error="shape")
    out = w.close()
    assert out["requests"] == 6 and out["errors"] == {"shape": 1} and out["samples"] == 10
    assert out["window"] == {"start": 0.0, "end": 10.0}
    assert out["latency_ms"].count == 5 and out["latency_ms"].max == pytest.approx(5.0)
    assert out["features"][0].n == 40 and sum(out["features"][0].counts) == 40
    again = w.close()
    assert again["requests"] == 0 and again["latency_ms"] is None and again["window"]["start"] == 10.0


def test_feature_selection_keeps_any_model_under_the_payload_bound():
    feats = tuple(feature(f"img[{i}]", edges=tuple(float(e) for e in range(21)), index=i) for i in range(500))
    spec = (TensorSpec("x", "float32", ("N", 500, 4)),)
    tracked, left = select_features(feats, spec, TELEMETRY_MAX_BYTES)
    assert 0 < len(tracked) < 500 and left == 500 - len(tracked)
    tr = FeatureTracker(tracked)
    rng = np.random.default_rng(0)
    tr.add({"x": (rng.standard_normal((8, 500, 4)) * 1e6).astype(np.float32)})  # worst case: long floats
    windows, _ = tr.take()
    payload = encode({"v": 1, "type": "telemetry", "device": "x" * 64, "features": [w.__dict__ for w in windows], "errors": {},
                      "latency_ms": {"count": 1, "p50": 1.234567, "p95": 1.234567, "p99": 1.234567, "max": 1.234567, "mean": 1.234567}})
    assert len(payload) <= TELEMETRY_MAX_BYTES


def test_prometheus_text():
    m = Metrics()
    m.prediction(0.0003, 4)
    m.prediction(20.0, 1)
    m.error("shape")
    m.http_request("POST", "/v1/predict", 400)
    m.gauge("edgekit_agent_outbox_depth", "depth", lambda: 3)
    m.info = lambda: {"name": "digits", "version": "1"}
    text = m.render()
    assert "edgekit_agent_predictions_total 2" in text
    assert "edgekit_agent_prediction_samples_total 5" in text
    assert 'edgekit_agent_errors_total{kind="shape"} 1' in text
    assert 'edgekit_agent_http_requests_total{method="POST",path="/v1/predict",code="400"} 1' in text
    assert 'edgekit_agent_inference_seconds_bucket{le="0.0005"} 1' in text
    assert 'edgekit_agent_inference_seconds_bucket{le="10.0"} 1' in text
    assert 'edgekit_agent_inference_seconds_bucket{le="+Inf"} 2' in text
    assert 'edgekit_agent_model_info{name="digits",version="1"} 1' in text
    assert "edgekit_agent_outbox_depth 3" in text


def test_large_inputs_are_sampled_on_arrival_with_the_same_result():
    """Images are reduced to per-feature strided samples in observe(): same counts as binning the tensor."""
    rng = np.random.default_rng(3)
    feats = [feature(f"x[{c}]", edges=(-1.0, 0.0, 1.0), index=c) for c in range(3)]
    x = rng.standard_normal((2, 3, 128, 128)).astype(np.float32)
    direct = FeatureTracker(feats, max_values_per_feature=1000)
    direct.add({"x": x})
    expected, _ = direct.take()
    w, one_by_one = Window(FeatureTracker(feats, max_values_per_feature=1000)), Window(FeatureTracker(feats, max_values_per_feature=1000))
    for i in range(2):  # the request path's one-sample copy of the strided values
        one_by_one.record(0.001, inputs={"x": x[i:i + 1].copy()})
    w.observe({"x": x})
    x[:] = 99.0  # the caller reuses its buffer: the queued samples must not change
    got = w.close()
    assert got["samples"] == 2
    for a, b in zip(got["features"], expected, strict=True):
        assert (a.counts, a.under, a.over, a.n) == (b.counts, b.under, b.over, b.n) and a.n == 2 * len(range(0, 128 * 128, 17))  # stride 17
        assert a.mean == pytest.approx(b.mean)
    _same(one_by_one.close()["features"], got["features"])


@pytest.mark.parametrize("bins", [3, 10, 100])
def test_binning_matches_numpy_histogram(bins):
    rng = np.random.default_rng(bins)
    ref = rng.standard_normal(5000)
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)))
    live = np.concatenate([rng.standard_normal(20000) * 1.5, edges, [np.nan, np.inf, -np.inf]]).astype(np.float32)
    tr = FeatureTracker([feature(edges=tuple(edges), axis=1)])
    tr.add({"x": live.reshape(-1, 1)})
    (f,), _ = tr.take()
    fin = live[np.isfinite(live)].astype(np.float64)
    counts, _ = np.histogram(fin[(fin >= edges[0]) & (fin <= edges[-1])], bins=edges)
    assert f.counts == counts.tolist()
    assert f.under == int((fin < edges[0]).sum()) and f.over == int((fin > edges[-1]).sum()) and f.nan == 3
    assert f.n == live.size and sum(f.counts) + f.under + f.over + f.nan == f.n


def _same(a, b):
    """Feature windows equal field by field (exact: same counts, same rounded moments)."""
    assert [w.__dict__ for w in a] == [w.__dict__ for w in b]


def test_partial_block_is_flushed_into_the_window_that_closes(monkeypatch):
    monkeypatch.setattr(telemetry, "BLOCK_ROWS", 8)  # 8 samples per block: 20 samples = 2 full blocks + 4
    w = Window(FeatureTracker([feature()]), clock=iter([0.0, 10.0, 20.0]).__next__)
    x = np.arange(20 * 8, dtype=np.float32).reshape(20, 1, 8) / 40  # 0, 0.025, ..., 3.975
    for i in range(20):
        w.record(0.001, inputs={"x": x[i:i + 1]})
    assert w._block.rows == 4  # the partial block: not binned yet
    out = w.close()
    (f,) = out["features"]
    assert out["samples"] == 20 and out["requests"] == 20 and f.n == 160
    assert f.counts == [40, 40, 41] and f.under == 0 and f.over == 39  # 3.0 is in the last (closed) bin
    assert f.min == 0.0 and f.max == 3.975 and f.mean == pytest.approx(x.mean(dtype=np.float64))
    again = w.close()
    assert again["samples"] == 0 and again["features"][0].n == 0  # nothing carried over into the next window


def test_batched_and_single_requests_give_identical_summaries(monkeypatch):
    monkeypatch.setattr(telemetry, "BLOCK_ROWS", 16)  # batches straddle block boundaries
    rng = np.random.default_rng(7)
    feats = [feature(), feature("x[1]", index=1, edges=(-1.0, 0.0, 0.5, 2.0))]
    x = (rng.standard_normal((101, 2, 8)) * 2).astype(np.float32)
    x[5, 0, 3] = np.nan
    x[60, 1, 0] = -np.inf
    single, batched = Window(FeatureTracker(feats)), Window(FeatureTracker(feats))
    for i in range(101):
        single.record(0.001, inputs={"x": x[i:i + 1]})
    for a, b in [(0, 7), (7, 40), (40, 41), (41, 101)]:
        batched.record(0.001, inputs={"x": x[a:b]})
    s, b = single.close(), batched.close()
    assert s["samples"] == b["samples"] == 101
    _same(s["features"], b["features"])
    f0 = s["features"][0]
    assert f0.n == 808 and f0.nan == 1 and s["features"][1].nan == 1
    fin = x[:, 0][np.isfinite(x[:, 0])].astype(np.float64)
    assert f0.mean == pytest.approx(fin.mean(), rel=1e-5) and f0.std == pytest.approx(fin.std(), rel=1e-5)  # 6 digits sent


def test_requests_of_another_shape_are_summarised_too():
    """Symbolic dims: requests unlike the block's first one are gathered alone, binned at close."""
    feats = [feature(edges=(0.0, 1.0, 2.0)), feature("x[2]", index=2, edges=(0.0, 1.0, 2.0))]
    w = Window(FeatureTracker(feats))
    a = np.full((2, 3, 4), 0.5, np.float32)
    b = np.full((1, 2, 6), 1.5, np.float32)  # no channel 2: x[2] has nothing to bin in it
    w.record(0.001, inputs={"x": a})
    w.record(0.001, inputs={"x": b})
    w.record(0.001, inputs={"x": a})
    out = w.close()
    f0, f2 = out["features"]
    assert out["samples"] == 5
    assert f0.n == 2 * 4 * 2 + 6 and f0.counts == [16, 6]
    assert f2.n == 16 and f2.counts == [16, 0]


def test_concurrent_requests_are_all_counted(monkeypatch):
    monkeypatch.setattr(telemetry, "BLOCK_ROWS", 32)  # many hand-overs of full blocks while others append
    w = Window(FeatureTracker([feature(edges=(0.0, 1.0, 2.0, 3.0, 4.0))]))
    x = [np.full((1, 1, 4), float(k), np.float32) + 0.5 for k in range(4)]  # thread k: bin k

    def work(k: int) -> None:
        for _ in range(500):
            w.record(1e-4, inputs={"x": x[k]})

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out = w.close()
    assert out["requests"] == 2000 and out["samples"] == 2000 and out["latency_ms"].count == 2000
    assert out["features"][0].counts == [2000] * 4 and out["features"][0].n == 8000


def test_float32_values_next_to_an_edge_fall_in_the_float64_bin():
    """float32 inputs are compared with rounded float32 thresholds; the counts must not change."""
    e = (0.1, 0.2, 0.3)  # none is a float32
    tr = FeatureTracker([feature(edges=e)])
    vals = []
    for edge in e:
        c = np.float32(edge)
        vals += [np.nextafter(c, np.float32(-1)), c, np.nextafter(c, np.float32(1))]
    live = np.array(vals, np.float32)
    tr.add({"x": live.reshape(-1, 1)})
    (f,), _ = tr.take()
    v = live.astype(np.float64)
    counts, _ = np.histogram(v[(v >= e[0]) & (v <= e[-1])], bins=e)
    assert f.counts == counts.tolist() and f.under == int((v < e[0]).sum()) and f.over == int((v > e[-1]).sum())


def test_category_counts_stay_bounded_whatever_strings_arrive():
    from device_agent.telemetry.categories import CategoryTracker, select_categories

    colour = FeatureProfile("colour", 1, 0, "colour", (0.0, 1.0, 2.0, 3.0), (50, 30, 20), 0.0, 3.0, 0.0, 0.0, 0.0, ("red", "green", "blue"))
    tracker = CategoryTracker([colour])
    values = np.array(["red", "blue", "", *(f"shade-{i}" for i in range(5000))], dtype=object).reshape(-1, 1)
    tracker.add({"colour": values, "other": np.zeros((5003, 1))})
    (w,), samples = tracker.take()
    assert (w.counts, w.over, w.nan, w.n, samples) == ([1, 0, 1], 5000, 1, 5003, 5003)
    assert w.mean is None and len(encode({"features": [w.__dict__]})) < 200  # 5,000 distinct strings, one small window
    assert tracker.take()[0][0].n == 0  # taken: the next window starts empty
    many = [FeatureProfile(f"c{i}", 1, 0, f"c{i}", tuple(float(j) for j in range(101)), (1,) * 100, 0.0, 100.0, 0.0, 0.0, 0.0,
                           tuple(str(j) for j in range(100))) for i in range(20)]
    kept, left = select_categories(tuple(many), 8000)
    assert len(kept) + left == 20 and 0 < len(kept) < 20 and kept == many[:len(kept)]  # manifest order, within the budget


def test_metrics_count_every_request_from_many_threads(monkeypatch):
    """The request path appends without a lock; the counters fold the requests in (every FOLD_EVERY and at
    each read) and lose none, whichever thread folds."""
    from device_agent.telemetry import metrics as metrics_module

    monkeypatch.setattr(metrics_module, "FOLD_EVERY", 7)
    m = Metrics()

    def serve(n: int) -> None:
        for i in range(n):
            m.prediction(0.0003 if i % 2 else 0.02, 2)
            if i % 50 == 0:
                m.snapshot()  # a scrape racing the requests

    threads = [threading.Thread(target=serve, args=(1001,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert m.snapshot()["predictions"] == 4004 and m.snapshot()["samples"] == 8008
    text = m.render()
    assert 'edgekit_agent_inference_seconds_bucket{le="0.0005"} 2000' in text
    assert 'edgekit_agent_inference_seconds_bucket{le="+Inf"} 4004' in text
    assert f"edgekit_agent_inference_seconds_sum {2000 * 0.0003 + 2004 * 0.02:.9f}" in text
