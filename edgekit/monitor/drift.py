"""Input drift from binned summaries: PSI, a KS statistic, NaN and out-of-range shares.

Devices never send raw inputs. Each telemetry window carries, per tracked feature, counts over the
manifest's reference bin edges plus under/overflow, a NaN count and moments
(:class:`device_agent.contract.protocol.FeatureWindow`). Counts are additive, so windows of one device (or
of every device of a group) on one model version merge by summing (:class:`FeatureSummary`), and
the statistics below are computed from the merged counts against the reference counts
(:class:`device_agent.contract.manifest.FeatureProfile`).

- **PSI** (population stability index) over the cells ``[under, bin 0 … bin k-1, over]`` of finite
  values: ``Σ (q - p) · ln(q / p)``, with a Jeffreys pseudo-count (½) in every cell of both
  distributions so an empty cell is finite, not infinite.
- **KS**: the largest gap between the two cumulative distributions at the bin edges. On binned data
  it is a lower bound of the exact two-sample statistic (the gap inside a bin is not visible).
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

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from device_agent.contract.manifest import FeatureProfile
from device_agent.contract.protocol import FeatureWindow, TelemetryMessage

__all__ = [
    "DriftReport",
    "DriftThresholds",
    "FeatureDrift",
    "FeatureSummary",
    "Level",
    "WindowSet",
    "chi2_quantile",
    "evaluate",
    "feature_drift",
    "ks_statistic",
    "min_samples_for",
    "psi",
]

#: Jeffreys pseudo-count added to every cell before PSI's logarithm
PSEUDO_COUNT = 0.5
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


def worst(levels: Iterable[Level]) -> Level:
    """The most severe level (``NOT_ENOUGH_DATA`` for an empty or all-unknown input)."""
    return max(levels, key=lambda x: x.rank, default=Level.NOT_ENOUGH_DATA)


class DriftThresholds(BaseModel):
    """When a feature warns or alerts. Shares are fractions (0.05 = 5 %)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    psi_warn: float = Field(0.1, gt=0, description="PSI at or above which a feature warns.")
    psi_alert: float = Field(0.25, gt=0, description="PSI at or above which a feature alerts.")
    ks_warn: float | None = Field(None, gt=0, le=1, description="KS statistic at or above which a feature warns (None: KS is reported, not judged).")
    ks_alert: float | None = Field(None, gt=0, le=1, description="KS statistic at or above which a feature alerts (None: not judged).")
    nan_warn: float = Field(0.01, gt=0, le=1, description="NaN/inf share above the reference's at which a feature warns.")
    nan_alert: float = Field(0.05, gt=0, le=1, description="NaN/inf share above the reference's at which a feature alerts.")
    range_warn: float = Field(0.05, gt=0, le=1, description="Share of finite values outside the reference range, beyond what the reference implies, at which a feature warns.")
    range_alert: float = Field(0.15, gt=0, le=1, description="Out-of-range share (as for range_warn) at which a feature alerts.")
    min_samples: int | None = Field(None, ge=1, description="Samples (batch rows) needed for a verdict; None: derived from the bins and psi_warn (see the module docs).")

    @model_validator(mode="after")
    def _ordered(self) -> DriftThresholds:
        for name, lo, hi in (("psi", self.psi_warn, self.psi_alert), ("nan", self.nan_warn, self.nan_alert),
                             ("range", self.range_warn, self.range_alert), ("ks", self.ks_warn, self.ks_alert)):
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"{name}_warn {lo} is above {name}_alert {hi}; warn must be at or below alert")
        return self


# --- statistics ------------------------------------------------------------------------------------


def chi2_quantile(p: float, df: int) -> float:
    """χ² quantile by Wilson-Hilferty: at p = 0.999 within 2 % above the exact value for df ≥ 3 (pure Python)."""
    if df < 1:
        return 0.0
    z = _normal_quantile(p)
    h = 2.0 / (9.0 * df)
    return df * max(0.0, 1.0 - h + z * math.sqrt(h)) ** 3


def _normal_quantile(p: float) -> float:
    # Acklam's rational approximation (|error| < 1.2e-9): scipy stays out of the picture
    a = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02, 1.383577518672690e02, -3.066479806614716e01, 2.506628277459239e00)
    b = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02, 6.680131188771972e01, -1.328068155288572e01)
    c = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00, -2.549732539343734e00, 4.374664141464968e00, 2.938163982698783e00)
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
    if p < 0.02425:
        q = math.sqrt(-2 * math.log(p))
        return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    if p > 1 - 0.02425:
        return -_normal_quantile(1 - p)
    q = p - 0.5
    r = q * q
    return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)


def min_samples_for(reference_counts: Sequence[int], thresholds: DriftThresholds) -> int:
    """Samples needed before a feature with these reference counts gets a verdict (see the module docs)."""
    if thresholds.min_samples is not None:
        return thresholds.min_samples
    c = chi2_quantile(1 - FALSE_POSITIVE_RATE, max(1, len(reference_counts) - 1)) / thresholds.psi_warn
    big_n = float(sum(reference_counts))
    # both samples are noisy: n·N/(n+N)·PSI ~ χ²; a reference barely larger than c caps the need at 5c
    n = c * big_n / (big_n - c) if big_n > 1.25 * c else 5 * c
    return max(30, math.ceil(n))


def psi(reference: Sequence[float] | np.ndarray, live: Sequence[float] | np.ndarray, *, pseudo_count: float = PSEUDO_COUNT) -> float:
    """Population stability index between two count vectors over the same cells."""
    r = np.asarray(reference, dtype=np.float64) + pseudo_count
    q = np.asarray(live, dtype=np.float64) + pseudo_count
    if r.shape != q.shape:
        raise ValueError(f"PSI needs counts over the same cells: reference has {r.size}, live has {q.size}")
    p, q = r / r.sum(), q / q.sum()
    return float(np.sum((q - p) * np.log(q / p)))


def ks_statistic(reference: Sequence[float] | np.ndarray, live: Sequence[float] | np.ndarray) -> float:
    """Largest gap between the cumulative shares of two count vectors over the same ordered cells."""
    r = np.asarray(reference, dtype=np.float64)
    q = np.asarray(live, dtype=np.float64)
    if r.sum() <= 0 or q.sum() <= 0:
        return 0.0
    return float(np.max(np.abs(np.cumsum(q) / q.sum() - np.cumsum(r) / r.sum())))


# --- merging windows ----------------------------------------------------------------------------


@dataclass
class FeatureSummary:
    """One feature's counts and moments, merged over any number of windows (and devices)."""

    name: str
    counts: np.ndarray
    under: int = 0
    over: int = 0
    nan: int = 0
    n: int = 0
    finite: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: float = math.inf
    max: float = -math.inf

    @classmethod
    def empty(cls, name: str, bins: int) -> FeatureSummary:
        return cls(name, np.zeros(bins, np.int64))

    def add(self, w: FeatureWindow) -> None:
        """Merge one window (counts must be over the same edges)."""
        if len(w.counts) != len(self.counts):
            raise ValueError(f"feature {w.name!r}: a window has {len(w.counts)} bins, the reference {len(self.counts)}; "
                             "the device summarises on a different profile (another model version?)")
        self.counts += np.asarray(w.counts, np.int64)
        self.under += w.under
        self.over += w.over
        self.nan += w.nan
        self.n += w.n
        fin = w.n - w.nan
        if fin <= 0 or w.mean is None:
            return
        std = w.std or 0.0
        # Chan et al.: merge (count, mean, M2) without the raw values
        total = self.finite + fin
        delta = w.mean - self.mean
        self.mean += delta * fin / total
        self.m2 += std * std * fin + delta * delta * self.finite * fin / total
        self.finite = total
        self.min = min(self.min, w.min if w.min is not None else math.inf)
        self.max = max(self.max, w.max if w.max is not None else -math.inf)

    @property
    def std(self) -> float | None:
        return math.sqrt(self.m2 / self.finite) if self.finite else None

    def cells(self) -> np.ndarray:
        """Counts of finite values over ``[under, bins…, over]``."""
        return np.concatenate([[self.under], self.counts, [self.over]])

    def merge(self, other: FeatureSummary) -> None:
        """Add another summary of the same feature (e.g. from another collector)."""
        if len(other.counts) != len(self.counts):
            raise ValueError(f"feature {self.name!r}: cannot merge {len(other.counts)} bins into {len(self.counts)}")
        self.counts += other.counts
        self.under += other.under
        self.over += other.over
        self.nan += other.nan
        self.n += other.n
        if other.finite:
            total = self.finite + other.finite
            delta = other.mean - self.mean
            self.mean += delta * other.finite / total
            self.m2 += other.m2 + delta * delta * self.finite * other.finite / total
            self.finite = total
            self.min = min(self.min, other.min)
            self.max = max(self.max, other.max)

    def to_dict(self) -> dict[str, Any]:
        fin = self.finite > 0
        return {"name": self.name, "counts": [int(c) for c in self.counts], "under": self.under, "over": self.over, "nan": self.nan,
                "n": self.n, "finite": self.finite, "mean": self.mean, "m2": self.m2,
                "min": self.min if fin else None, "max": self.max if fin else None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSummary:
        return cls(str(d["name"]), np.asarray(d["counts"], np.int64), int(d["under"]), int(d["over"]), int(d["nan"]), int(d["n"]),
                   int(d["finite"]), float(d["mean"]), float(d["m2"]), math.inf if d.get("min") is None else float(d["min"]),
                   -math.inf if d.get("max") is None else float(d["max"]))


@dataclass
class WindowSet:
    """Telemetry windows of one model version merged per feature (one device, or a whole group)."""

    model: str
    version: str
    features: dict[str, FeatureSummary] = field(default_factory=dict)
    samples: int = 0
    requests: int = 0
    windows: int = 0
    devices: set[str] = field(default_factory=set)
    start: float | None = None
    end: float | None = None

    def add(self, msg: TelemetryMessage) -> None:
        self.windows += 1
        self.samples += msg.samples
        self.requests += msg.requests
        self.devices.add(msg.device)
        ws, we = float(msg.window.get("start", msg.ts)), float(msg.window.get("end", msg.ts))
        self.start = ws if self.start is None else min(self.start, ws)
        self.end = we if self.end is None else max(self.end, we)
        for f in msg.features:
            s = self.features.get(f.name)
            if s is None:
                s = self.features[f.name] = FeatureSummary.empty(f.name, len(f.counts))
            if len(f.counts) == len(s.counts):  # a window on other edges cannot be merged; it is left out
                s.add(f)

    def merge(self, other: WindowSet) -> None:
        """Add another set of the same model version (another collector's share of the traffic)."""
        self.windows += other.windows
        self.samples += other.samples
        self.requests += other.requests
        self.devices |= other.devices
        for attr, pick in (("start", min), ("end", max)):
            a, b = getattr(self, attr), getattr(other, attr)
            setattr(self, attr, b if a is None else a if b is None else pick(a, b))
        for name, f in other.features.items():
            mine = self.features.get(name)
            if mine is None:
                self.features[name] = FeatureSummary.from_dict(f.to_dict())
            elif len(mine.counts) == len(f.counts):
                mine.merge(f)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "samples": self.samples, "requests": self.requests, "windows": self.windows,
                "devices": sorted(self.devices), "start": self.start, "end": self.end,
                "features": [f.to_dict() for f in self.features.values()]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WindowSet:
        ws = cls(str(d["model"]), str(d["version"]), samples=int(d["samples"]), requests=int(d["requests"]), windows=int(d["windows"]),
                 devices=set(d.get("devices") or ()), start=d.get("start"), end=d.get("end"))
        ws.features = {f["name"]: FeatureSummary.from_dict(f) for f in d["features"]}
        return ws


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

    def to_dict(self) -> dict[str, Any]:
        def r(x: float | None, nd: int = 4) -> float | None:
            return None if x is None or not math.isfinite(x) else round(x, nd)

        return {"name": self.name, "level": str(self.level), "samples": self.samples, "values": self.values, "psi": r(self.psi),
                "ks": r(self.ks), "nan_share": r(self.nan_share), "out_of_range_share": r(self.out_of_range_share), "mean": r(self.mean, 6),
                "mean_shift_std": r(self.mean_shift_std, 3), "reasons": list(self.reasons), "min_samples": self.min_samples}

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


def feature_drift(reference: FeatureProfile, live: FeatureSummary, *, samples: int | None = None,
                  thresholds: DriftThresholds | None = None) -> FeatureDrift:
    """Judge one feature's merged live counts against its reference.

    Args:
        reference: the manifest's profile of the feature.
        live: the merged live summary (same edges).
        samples: batch rows behind ``live`` (None: the number of values).
        thresholds: warn/alert levels and the minimum sample count.
    """
    t = thresholds or DriftThresholds()
    need = min_samples_for(reference.counts, t)
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
        ref_cells = np.concatenate([[0], np.asarray(reference.counts, np.float64), [0]])
        cells = live.cells()
        psi_value = psi(ref_cells, cells)
        ks_value = ks_statistic(ref_cells, cells)
        oor = (live.under + live.over) / live.finite
        # quantile edges span the reference sample: a new value falls outside with chance 2/(N+1)
        expected_oor = 2.0 / (sum(reference.counts) + 1)
        verdicts.append(_judge(psi_value, t.psi_warn, t.psi_alert, "PSI", ".3f"))
        verdicts.append(_judge(ks_value, t.ks_warn, t.ks_alert, "KS", ".3f"))
        verdicts.append(_judge(max(0.0, oor - expected_oor), t.range_warn, t.range_alert, "out-of-range share", ".1%"))
        if reference.std > 0:
            shift = (live.mean - reference.mean) / reference.std
    level = worst(v for v, _ in verdicts)
    reasons = tuple(r for v, r in sorted(verdicts, key=lambda x: -x[0].rank) if r)
    return FeatureDrift(live.name, level, rows, live.n, psi_value, ks_value, nan_share, oor, live.mean if live.finite else None, shift,
                        reasons, need)


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


def evaluate(windows: WindowSet, reference: Sequence[FeatureProfile], *, scope: str = "device", name: str = "",
             thresholds: DriftThresholds | None = None) -> DriftReport:
    """Judge every reference feature the windows carry; the report's level is the worst feature's."""
    by_name = {f.name: f for f in reference}
    results = []
    for fname, live in windows.features.items():
        ref = by_name.get(fname)
        if ref is None or len(ref.counts) != len(live.counts):
            continue
        results.append(feature_drift(ref, live, samples=windows.samples or None, thresholds=thresholds))
    untracked = tuple(sorted(n for n, s in windows.features.items() if n not in by_name or len(by_name[n].counts) != len(s.counts)))
    return DriftReport(scope, name, windows.model, windows.version, worst(f.level for f in results), tuple(results), windows.samples,
                       windows.windows, tuple(sorted(windows.devices)), windows.start, windows.end, untracked)
