import math

import numpy as np
import pytest
from pydantic import ValidationError

from device_agent.contract.manifest import FeatureProfile
from device_agent.contract.protocol import FeatureWindow
from edgekit.monitor.drift import DriftThresholds, Level, evaluate, feature_drift, min_samples_for
from edgekit.monitor.stats import chi2_quantile, ks_statistic, psi
from edgekit.monitor.windows import FeatureSummary, WindowSet


def profile(values: np.ndarray, bins: int = 10, name: str = "x[0]") -> FeatureProfile:
    edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)))
    counts, _ = np.histogram(values, edges)
    return FeatureProfile("x", 1, 0, name, tuple(edges), tuple(int(c) for c in counts), float(values.min()), float(values.max()),
                          float(values.mean()), float(values.std()), 0.0)


def window(ref: FeatureProfile, v: np.ndarray) -> FeatureWindow:
    """What the agent's FeatureTracker sends for values ``v`` (same binning convention)."""
    edges = np.asarray(ref.edges)
    fin = v[np.isfinite(v)]
    idx = np.searchsorted(edges, fin, side="right") - 1
    idx[fin == edges[-1]] = len(edges) - 2
    inside = idx[(idx >= 0) & (idx < len(edges) - 1)]
    has = fin.size > 0
    return FeatureWindow(ref.name, int(v.size), np.bincount(inside, minlength=len(edges) - 1).tolist(), int((idx < 0).sum()),
                         int((idx >= len(edges) - 1).sum()), int(v.size - fin.size), float(fin.min()) if has else None,
                         float(fin.max()) if has else None, float(fin.mean()) if has else None, float(fin.std()) if has else None)


def summary(ref: FeatureProfile, v: np.ndarray) -> FeatureSummary:
    s = FeatureSummary.empty(ref.name, len(ref.counts))
    s.add(window(ref, v))
    return s


def test_psi_and_ks_on_known_counts():
    assert psi([10, 20, 30], [10, 20, 30]) == pytest.approx(0.0, abs=1e-12)
    assert ks_statistic([10, 20, 30], [20, 40, 60]) == pytest.approx(0.0)
    # hand-computed with the ½ pseudo-count: p = (50.5, 50.5)/101, q = (90.5, 10.5)/101
    p, q = np.array([0.5, 0.5]), np.array([90.5, 10.5]) / 101
    assert psi([50, 50], [90, 10]) == pytest.approx(float(np.sum((q - p) * np.log(q / p))))
    assert ks_statistic([50, 50], [90, 10]) == pytest.approx(0.4)
    assert math.isfinite(psi([100, 0], [0, 100]))  # empty cells never give infinity
    with pytest.raises(ValueError, match="same cells"):
        psi([1, 2], [1, 2, 3])


def test_chi2_quantile_is_close_to_the_table():
    # χ² table values (upper 0.1 %)
    for df, want in ((3, 16.266), (9, 27.877), (15, 37.697)):
        assert want <= chi2_quantile(0.999, df) <= want * 1.02  # errs on the side of more samples


def test_thresholds_are_validated_with_a_clear_message():
    with pytest.raises(ValidationError, match="psi_warn 0.3 is above psi_alert 0.25"):
        DriftThresholds(psi_warn=0.3)
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        DriftThresholds(psi_warm=0.1)


def test_min_samples_grows_with_bins_and_a_small_reference():
    t = DriftThresholds()
    big = min_samples_for([100_000] * 10, t)
    assert 300 < big < 400
    assert min_samples_for([200] * 10, t) > big  # a noisy reference needs more live data
    assert min_samples_for([100_000] * 4, t) < big
    assert min_samples_for([5] * 10, DriftThresholds(min_samples=50)) == 50


def test_reference_data_is_ok_and_a_one_std_shift_alerts():
    rng = np.random.default_rng(0)
    ref = profile(rng.normal(3.0, 2.0, 5000))
    same = feature_drift(ref, summary(ref, rng.normal(3.0, 2.0, 1000)))
    assert same.level is Level.OK and same.psi < 0.05 and same.ks < 0.06
    moved = feature_drift(ref, summary(ref, rng.normal(5.0, 2.0, 1000)))
    assert moved.level is Level.ALERT and moved.psi > 0.25
    assert moved.mean_shift_std == pytest.approx(1.0, abs=0.1)
    assert moved.reasons[0].startswith("PSI ") and "≥ 0.250" in moved.reasons[0]


def test_not_enough_data_says_so_instead_of_a_number():
    rng = np.random.default_rng(1)
    ref = profile(rng.normal(size=5000))
    d = feature_drift(ref, summary(ref, rng.normal(5.0, 1.0, 40)))  # moved, but only 40 samples
    assert d.level is Level.NOT_ENOUGH_DATA and d.psi is None and d.ks is None
    assert d.reasons == (f"40 samples < {d.min_samples} needed",)
    assert Level.NOT_ENOUGH_DATA.text == "not enough data"


def test_nan_burst_is_reported_even_in_a_small_window():
    rng = np.random.default_rng(2)
    ref = profile(rng.normal(size=5000))
    v = rng.normal(size=60)
    v[:6] = np.nan
    d = feature_drift(ref, summary(ref, v))
    assert d.level is Level.ALERT and d.nan_share == pytest.approx(0.1)
    assert d.reasons[0] == "NaN share 10.0% ≥ 5.0%"


def test_out_of_range_values_are_judged_beyond_what_the_reference_implies():
    rng = np.random.default_rng(3)
    ref = profile(rng.uniform(0, 1, 5000))
    v = rng.uniform(0, 1, 1000)
    v[:200] = 7.0  # 20 % far above the reference's maximum
    d = feature_drift(ref, summary(ref, v))
    assert d.out_of_range_share == pytest.approx(0.2)
    assert any(r.startswith("out-of-range share 20.0%") for r in d.reasons) and d.level is Level.ALERT


def test_merging_windows_equals_one_big_window():
    rng = np.random.default_rng(4)
    ref = profile(rng.normal(size=3000))
    parts = [rng.normal(0.3, 1.2, n) for n in (17, 250, 1, 400)]
    merged = FeatureSummary.empty(ref.name, 10)
    for p in parts:
        merged.add(window(ref, p))
    whole = summary(ref, np.concatenate(parts))
    assert merged.counts.tolist() == whole.counts.tolist() and (merged.under, merged.over) == (whole.under, whole.over)
    assert merged.mean == pytest.approx(whole.mean) and merged.std == pytest.approx(whole.std)
    # and through the wire form, as a second collector's share would come
    a, b = FeatureSummary.empty(ref.name, 10), FeatureSummary.empty(ref.name, 10)
    a.add(window(ref, parts[1]))
    b.add(window(ref, parts[3]))
    a.merge(FeatureSummary.from_dict(b.to_dict()))
    both = summary(ref, np.concatenate([parts[1], parts[3]]))
    assert a.counts.tolist() == both.counts.tolist() and a.std == pytest.approx(both.std)


def test_report_names_the_features_that_moved_most_first():
    from device_agent.contract.protocol import TelemetryMessage

    rng = np.random.default_rng(5)
    refs = [profile(rng.normal(size=4000), name=f"x[{i}]") for i in range(4)]
    shifts = {1: 0.5, 3: 2.0}
    feats = [window(r, rng.normal(shifts.get(i, 0.0), 1.0, 800)) for i, r in enumerate(refs)]
    msg = TelemetryMessage("pi-07", 1, 0, 10.0, {"name": "m", "version": "1"}, {"start": 0.0, "end": 10.0}, 800, {}, None, feats, samples=800)
    ws = WindowSet("m", "1")
    ws.add(msg)
    report = evaluate(ws, refs, name="pi-07")
    assert [f.name for f in report.moved] == ["x[3]", "x[1]"]
    assert report.level is Level.ALERT and report.to_dict()["moved"] == ["x[3]", "x[1]"]
    round_trip = WindowSet.from_dict(ws.to_dict())
    assert evaluate(round_trip, refs, name="pi-07").to_dict() == report.to_dict()


def test_judging_many_running_totals_at_once_gives_the_same_reports_as_one_window_set_at_a_time():
    from device_agent.contract.protocol import TelemetryMessage
    from edgekit.monitor.bulk import Merged, evaluate_totals
    from edgekit.monitor.store import Layout, Totals

    rng = np.random.default_rng(5)
    refs = [profile(rng.normal(j, 1 + j, 3000), name=f"x[{j}]") for j in range(4)]
    items, sets = [], []
    for k in range(12):
        ws, total = WindowSet("m", "1"), None
        for w in range(1 + k % 4):
            shift = 0.6 if k % 3 == 0 else 0.0
            vals = [rng.normal(j + shift * (j == 2), 1 + j, 40 + 35 * k) for j in range(4)]
            vals[1][: k % 5] = np.nan
            msg = TelemetryMessage(f"d{k}", w, 1, 0.0, {"name": "m", "version": "1"}, {"start": 0.0, "end": 1.0}, 1, {}, None,
                                   [window(r, v) for r, v in zip(refs, vals, strict=True)], samples=len(vals[0]))
            ws.add(msg)
            t = Totals.of_window(msg, Layout().extended(msg))
            total = t if total is None else total.add(t)
        items.append(Merged("device", f"d{k}", "m", "1", total, {f"d{k}"}, 0.0, 1.0))
        sets.append(ws)
    bulk = evaluate_totals(items, refs)
    for ws, got in zip(sets, bulk, strict=True):
        want = evaluate(ws, refs, scope="device", name=got.name).to_dict()
        assert got.to_dict() == want
    assert [r.level for r in evaluate_totals(items[:2], None)] == [Level.NOT_ENOUGH_DATA] * 2
