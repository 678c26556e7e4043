"""Drift verdicts: one feature, one device or one group, against the manifest's reference profile.

Live windows are merged per feature (:mod:`edgekit.monitor.windows`) and compared with the
reference counts (:class:`device_agent.contract.manifest.FeatureProfile`) by the statistics of
:mod:`edgekit.monitor.stats`:

- **PSI** over the cells ``[under, bin 0 … bin k-1, over]`` of finite values; for a table's categorical column
  (:mod:`device_agent.contract.categories`) the bins are its categories and the overflow the unseen ones, so the
  same PSI is over categories plus the unseen share, judged as the out-of-range share is (no KS, no mean);
- **KS**, the largest gap between the two cumulative distributions at the bin edges;
- **NaN share** (NaN and ±inf among all values) and **out-of-range share** (finite values outside the
  reference's ``[edges[0], edges[-1]]``), each judged by its excess over what the reference implies.

Below a minimum sample count the verdict is :attr:`Level.NOT_ENOUGH_DATA`, not a number. The default
("auto") is the sample count at which the PSI warn threshold has a false-positive rate of about
0.01 % per feature when the inputs *do* follow the reference: then ``PSI · n·N/(n+N)`` is
approximately χ² with ``bins - 1`` degrees of freedom (``n`` live samples, ``N`` reference samples),
so ``n_min = c·N/(N - c)`` with ``c = χ²₀.₉₉₉₉(bins - 1) / psi_warn`` (about 340 for 10 bins, a large
reference and the default 0.1; 410 with 2,000 reference samples). Samples are batch rows, not
values: the pixels of one image move together, so rows are the conservative count.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from device_agent.contract.manifest import FeatureProfile
from edgekit.monitor.stats import PSEUDO_COUNT, chi2_quantile, ks_statistic, psi
from edgekit.monitor.windows import FeatureSummary, WindowSet

__all__ = [
    "DriftReport",
    "DriftThresholds",
    "FeatureDrift",
    "Level",
    "LiveCounts",
    "evaluate",
    "feature_drift",
    "level_of",
    "min_samples_for",
    "worst",
]

#: target false-positive rate of the PSI warn threshold per feature, used for the automatic minimum sample count
FALSE_POSITIVE_RATE = 1e-4


class Level(str, Enum):
    """A drift verdict, ordered: ``OK < WARN < ALERT``; ``NOT_ENOUGH_DATA`` says nothing either way."""

    NOT_ENOUGH_DATA = "not_enough_data"
    OK = "ok"
    WARN = "warn"
    ALERT = "alert"

    def __str__(self) -> str:
        return self.value

    @property
    def rank(self) -> int:
        return _RANK[self]

    @property
    def text(self) -> str:
        return "not enough data" if self is Level.NOT_ENOUGH_DATA else self.value


_RANK = {Level.NOT_ENOUGH_DATA: -1, Level.OK: 0, Level.WARN: 1, Level.ALERT: 2}
_BY_VALUE = {lv.value: lv for lv in Level}


def level_of(value: str) -> Level:
    """``Level(value)``, without the enum machinery's cost (verdicts read thousands of stored levels a second)."""
    try:
        return _BY_VALUE[value]
    except KeyError:
        return Level(value)  # its error names the allowed values


def _severest_first(verdict: tuple[Level, str | None]) -> int:
    return -_RANK[verdict[0]]


def worst(levels: Iterable[Level]) -> Level:
    """The most severe level (``NOT_ENOUGH_DATA`` for an empty or all-unknown input); the first of equals."""
    out, rank = Level.NOT_ENOUGH_DATA, -2
    for lv in levels:  # a loop, not max(key=...): judging a thousand devices calls this tens of thousands of times
        r = _RANK[lv]
        if r > rank:
            out, rank = lv, r
    return out


class DriftThresholds(BaseModel):
    """When a feature warns or alerts. Shares are fractions (0.05 = 5 %)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    psi_warn: float = Field(default=0.1, gt=0, description="PSI at or above which a feature warns.")
    psi_alert: float = Field(default=0.25, gt=0, description="PSI at or above which a feature alerts.")
    ks_warn: float | None = Field(default=None, gt=0, le=1, description="KS statistic at or above which a feature warns (None: KS is reported, not judged).")
    ks_alert: float | None = Field(default=None, gt=0, le=1, description="KS statistic at or above which a feature alerts (None: not judged).")
    nan_warn: float = Field(default=0.01, gt=0, le=1, description="NaN/inf share above the reference's at which a feature warns.")
    nan_alert: float = Field(default=0.05, gt=0, le=1, description="NaN/inf share above the reference's at which a feature alerts.")
    range_warn: float = Field(default=0.05, gt=0, le=1, description="Share of finite values outside the reference range, beyond what the reference implies, at which a feature warns.")
    range_alert: float = Field(default=0.15, gt=0, le=1, description="Out-of-range share (as for range_warn) at which a feature alerts.")
    min_samples: int | None = Field(default=None, ge=1, description="Samples (batch rows) needed for a verdict; None: derived from the bins and psi_warn (see the module docs).")

    @model_validator(mode="after")
    def _ordered(self) -> DriftThresholds:
        for name, lo, hi in (("psi", self.psi_warn, self.psi_alert), ("nan", self.nan_warn, self.nan_alert),
                             ("range", self.range_warn, self.range_alert), ("ks", self.ks_warn, self.ks_alert)):
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"{name}_warn {lo} is above {name}_alert {hi}; warn must be at or below alert")
        return self


def min_samples_for(reference_counts: Sequence[int], thresholds: DriftThresholds) -> int:
    """Samples needed before a feature with these reference counts gets a verdict (see the module docs)."""
    if thresholds.min_samples is not None:
        return thresholds.min_samples
    if isinstance(reference_counts, tuple):  # a profile's: judged on every window, so remembered
        return _auto_for(reference_counts, thresholds.psi_warn)
    return _auto_min_samples(len(reference_counts), float(sum(reference_counts)), thresholds.psi_warn)


@functools.lru_cache(maxsize=4096)
def _auto_for(counts: tuple[int, ...], psi_warn: float) -> int:
    return _auto_min_samples(len(counts), float(sum(counts)), psi_warn)


@functools.lru_cache(maxsize=1024)
def _auto_min_samples(bins: int, big_n: float, psi_warn: float) -> int:
    c = chi2_quantile(1 - FALSE_POSITIVE_RATE, max(1, bins - 1)) / psi_warn
    # both samples are noisy: n·N/(n+N)·PSI ~ χ²; a reference barely larger than c caps the need at 5c
    n = c * big_n / (big_n - c) if big_n > 1.25 * c else 5 * c
    return max(30, math.ceil(n))


# --- verdicts ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureDrift:
    """The verdict on one feature. Statistics are None when there was not enough data."""

    name: str
    level: Level
    samples: int
    values: int
    psi: float | None
    ks: float | None
    nan_share: float | None
    out_of_range_share: float | None
    mean: float | None
    mean_shift_std: float | None  # (live mean - reference mean) / reference std
    reasons: tuple[str, ...] = ()
    min_samples: int = 0
    categorical: bool = False  # a table's string column: out_of_range_share is the share of unseen categories

    def to_dict(self) -> dict[str, Any]:
        # inline, not _rounded per value: `fleet drift --group --json` writes 8,000 of these (a thousand devices' features)
        psi, ks, nan, oor, mean, shift = self.psi, self.ks, self.nan_share, self.out_of_range_share, self.mean, self.mean_shift_std
        fin = math.isfinite
        return {"name": self.name, "level": self.level._value_, "samples": self.samples, "values": self.values,
                "psi": None if psi is None or not fin(psi) else round(psi, 4), "ks": None if ks is None or not fin(ks) else round(ks, 4),
                "nan_share": None if nan is None or not fin(nan) else round(nan, 4),
                "out_of_range_share": None if oor is None or not fin(oor) else round(oor, 4),
                "mean": None if mean is None or not fin(mean) else round(mean, 6),
                "mean_shift_std": None if shift is None or not fin(shift) else round(shift, 3), "reasons": list(self.reasons),
                "min_samples": self.min_samples, "categorical": self.categorical}

    @property
    def severity(self) -> tuple[int, float]:
        """Sort key: level first, then how far the feature moved."""
        return (self.level.rank, max(self.psi or 0.0, 0.0) + 10 * (self.nan_share or 0.0) + (self.out_of_range_share or 0.0))


def _judge(value: float, warn: float | None, alert: float | None, label: str, fmt: str) -> tuple[Level, str | None]:
    if alert is not None and value >= alert:
        return Level.ALERT, f"{label} {value:{fmt}} ≥ {alert:{fmt}}"
    if warn is not None and value >= warn:
        return Level.WARN, f"{label} {value:{fmt}} ≥ {warn:{fmt}}"
    return Level.OK, None


class LiveCounts(Protocol):
    """What judging reads of a feature's live counts (a :class:`FeatureSummary`, or a row of running totals)."""

    name: str
    n: int
    nan: int
    finite: int
    under: int
    over: int
    mean: float

    def cells(self) -> np.ndarray: ...


def feature_drift(reference: FeatureProfile, live: LiveCounts, *, samples: int | None = None,
                  thresholds: DriftThresholds | None = None, stats: tuple[float, float] | None = None) -> FeatureDrift:
    """Judge one feature's merged live counts against its reference.

    Args:
        reference: the manifest's profile of the feature.
        live: the merged live summary (same edges): a :class:`FeatureSummary`, or a row of running totals.
        samples: batch rows behind ``live`` (None: the number of values).
        thresholds: warn/alert levels and the minimum sample count.
        stats: (PSI, KS) when computed already for many features at once (:func:`evaluate`, :mod:`edgekit.monitor.bulk`).
    """
    t = thresholds or DriftThresholds()
    need = min_samples_for(reference.counts, t)
    categorical = reference.values is not None
    rows = live.n if not samples else min(samples, live.n)
    if live.n == 0:
        return FeatureDrift(live.name, Level.NOT_ENOUGH_DATA, 0, 0, None, None, None, None, None, None, (f"0 samples < {need} needed",), need)
    nan_share = live.nan / live.n
    nan_verdict = _judge(max(0.0, nan_share - reference.nan_share), t.nan_warn, t.nan_alert, "NaN share", ".1%")
    if rows < need:
        # NaN/inf inputs are never normal: a burst is reported even in a small window
        if nan_verdict[0].rank >= Level.WARN.rank:
            return FeatureDrift(live.name, nan_verdict[0], rows, live.n, None, None, nan_share, None, None, None,
                                (nan_verdict[1] or "", f"other statistics need {need} samples, have {rows}"), need)
        return FeatureDrift(live.name, Level.NOT_ENOUGH_DATA, rows, live.n, None, None, nan_share, None, None, None,
                            (f"{rows} samples < {need} needed",), need)
    verdicts: list[tuple[Level, str | None]] = [nan_verdict]
    psi_value = ks_value = oor = shift = None
    if live.finite:
        if stats is None:
            ref_cells = np.concatenate([[0], np.asarray(reference.counts, np.float64), [0]])
            cells = live.cells()
            stats = psi(ref_cells, cells), ks_statistic(ref_cells, cells)
        psi_value, ks_value = stats
        oor = (live.under + live.over) / live.finite
        # quantile edges span the reference sample: a new value falls outside with chance 2/(N+1)
        expected_oor = 2.0 / (sum(reference.counts) + 1)
        verdicts.append(_judge(psi_value, t.psi_warn, t.psi_alert, "PSI", ".3f"))
        if categorical:  # categories have no order: no KS, no mean; the overflow is the share of unseen categories
            ks_value = None
            verdicts.append(_judge(max(0.0, oor - expected_oor), t.range_warn, t.range_alert, "unseen-category share", ".1%"))
        else:
            verdicts.append(_judge(ks_value, t.ks_warn, t.ks_alert, "KS", ".3f"))
            verdicts.append(_judge(max(0.0, oor - expected_oor), t.range_warn, t.range_alert, "out-of-range share", ".1%"))
        if reference.std > 0:
            shift = (live.mean - reference.mean) / reference.std
    level = worst(v for v, _ in verdicts)
    reasons = tuple(r for v, r in sorted(verdicts, key=_severest_first) if r)
    return FeatureDrift(live.name, level, rows, live.n, psi_value, ks_value, nan_share, oor,
                        live.mean if live.finite and not categorical else None, shift, reasons, need, categorical)


@dataclass(frozen=True)
class DriftReport:
    """Drift of one scope (a device or a group) on one model version over a span of windows."""

    scope: str  # "device" | "group"
    name: str  # device id or group name
    model: str
    version: str
    level: Level
    features: tuple[FeatureDrift, ...]
    samples: int
    windows: int
    devices: tuple[str, ...]
    start: float | None
    end: float | None
    untracked: tuple[str, ...] = ()  # live features the reference does not know

    @property
    def moved(self) -> list[FeatureDrift]:
        """Features at warn or alert, the most moved first."""
        return sorted((f for f in self.features if f.level.rank >= Level.WARN.rank), key=lambda f: f.severity, reverse=True)

    def to_dict(self) -> dict[str, Any]:
        return {"scope": self.scope, "name": self.name, "model": self.model, "version": self.version, "level": str(self.level),
                "samples": self.samples, "windows": self.windows, "devices": list(self.devices), "start": self.start, "end": self.end,
                "moved": [f.name for f in self.moved], "features": [f.to_dict() for f in self.features], "untracked": list(self.untracked)}


def _stats_at_once(pairs: list[tuple[FeatureProfile, FeatureSummary]], samples: int | None,
                   t: DriftThresholds) -> dict[int, tuple[float, float]]:
    """PSI and KS of every pair that will be judged, one numpy pass per bin count (the same formulas as
    :func:`~edgekit.monitor.stats.psi` and :func:`~edgekit.monitor.stats.ks_statistic`; a report judges
    a dozen features, and numpy's per-call overhead was most of the time)."""
    todo: dict[int, list[int]] = {}
    for i, (ref, live) in enumerate(pairs):
        rows = live.n if not samples else min(samples, live.n)
        if live.finite and live.n and rows >= min_samples_for(ref.counts, t):
            todo.setdefault(len(ref.counts), []).append(i)
    out: dict[int, tuple[float, float]] = {}
    for bins, idx in todo.items():
        r = _reference_cells(tuple(pairs[i][0].counts for i in idx))
        q = np.empty((len(idx), bins + 2), np.float64)
        for j, i in enumerate(idx):
            live = pairs[i][1]
            q[j, 0], q[j, 1:-1], q[j, -1] = live.under, live.counts, live.over
        rp, qp = r + PSEUDO_COUNT, q + PSEUDO_COUNT
        rp /= rp.sum(axis=1, keepdims=True)
        qp /= qp.sum(axis=1, keepdims=True)
        psis = np.sum((qp - rp) * np.log(qp / rp), axis=1).tolist()
        rs, qs = r.sum(axis=1, keepdims=True), q.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            gaps = np.max(np.abs(np.cumsum(q, axis=1) / qs - np.cumsum(r, axis=1) / rs), axis=1).tolist()
        ok = ((rs[:, 0] > 0) & (qs[:, 0] > 0)).tolist()
        for j, i in enumerate(idx):
            out[i] = psis[j], gaps[j] if ok[j] else 0.0
    return out


@functools.lru_cache(maxsize=512)
def _reference_cells(counts: tuple[tuple[int, ...], ...]) -> np.ndarray:
    """Reference counts as cells ``[0, bins…, 0]``, one row per feature (read-only: shared between calls)."""
    out = np.array([[0, *c, 0] for c in counts], np.float64)
    out.setflags(write=False)
    return out


def evaluate(windows: WindowSet, reference: Sequence[FeatureProfile], *, scope: str = "device", name: str = "",
             thresholds: DriftThresholds | None = None) -> DriftReport:
    """Judge every reference feature the windows carry; the report's level is the worst feature's."""
    t = thresholds or DriftThresholds()
    by_name = {f.name: f for f in reference}
    pairs = [(by_name[n], live) for n, live in windows.features.items() if n in by_name and len(by_name[n].counts) == len(live.counts)]
    stats = _stats_at_once(pairs, windows.samples or None, t)
    results = [feature_drift(ref, live, samples=windows.samples or None, thresholds=t, stats=stats.get(i)) for i, (ref, live) in enumerate(pairs)]
    untracked = tuple(sorted(n for n, s in windows.features.items() if n not in by_name or len(by_name[n].counts) != len(s.counts)))
    return DriftReport(scope, name, windows.model, windows.version, worst(f.level for f in results), tuple(results), windows.samples,
                       windows.windows, tuple(sorted(windows.devices)), windows.start, windows.end, untracked)
