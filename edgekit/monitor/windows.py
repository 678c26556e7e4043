"""Telemetry windows merged: per-feature counts and moments summed over windows, devices and collectors.

Devices never send raw inputs. Each telemetry window carries, per tracked feature, counts over the
manifest's reference bin edges plus under/overflow, a NaN count and moments
(:class:`device_agent.contract.protocol.FeatureWindow`). Counts are additive, so windows of one device (or
of every device of a group) on one model version merge by summing (:class:`FeatureSummary`,
:class:`WindowSet`), and so do the shares of several collectors (``merge``). The drift verdicts
(:mod:`edgekit.monitor.drift`) are computed from merged sets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from device_agent.contract.protocol import FeatureWindow, TelemetryMessage

__all__ = ["FeatureSummary", "WindowSet", "group_windows"]


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
        return {"name": self.name, "counts": self.counts.tolist(), "under": self.under, "over": self.over, "nan": self.nan,
                "n": self.n, "finite": self.finite, "mean": self.mean, "m2": self.m2,
                "min": self.min if fin and math.isfinite(self.min) else None, "max": self.max if fin and math.isfinite(self.max) else None}

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

    @classmethod
    def of_message(cls, model: str, version: str, msg: TelemetryMessage) -> WindowSet:
        """``WindowSet(model, version)`` with ``msg`` added: the same numbers, built directly (judging does this per window)."""
        ws = cls(model, version, samples=msg.samples, requests=msg.requests, windows=1, devices={msg.device})
        ws.start, ws.end = float(msg.window.get("start", msg.ts)), float(msg.window.get("end", msg.ts))
        for w in msg.features:
            if w.name in ws.features:  # a feature sent twice: merged as add() would
                if len(w.counts) == len(ws.features[w.name].counts):
                    ws.features[w.name].add(w)
                continue
            fin = w.n - w.nan
            f = ws.features[w.name] = FeatureSummary(w.name, np.asarray(w.counts, np.int64), w.under, w.over, w.nan, w.n)
            if fin > 0 and w.mean is not None:
                std = w.std or 0.0
                # add() into an empty summary: the same arithmetic, so the same floats
                f.mean, f.m2, f.finite = 0.0 + w.mean * fin / fin, std * std * fin + w.mean * w.mean * 0 * fin / fin, fin
                f.min = min(math.inf, w.min if w.min is not None else math.inf)
                f.max = max(-math.inf, w.max if w.max is not None else -math.inf)
        return ws

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



def group_windows(messages: Iterable[TelemetryMessage], key: Callable[[TelemetryMessage], str | None]) -> dict[tuple[str, str, str], WindowSet]:
    """Merge windows per (key, model, version); messages whose key is None are skipped."""
    out: dict[tuple[str, str, str], WindowSet] = {}
    for msg in messages:
        k = key(msg)
        if k is None:
            continue
        model = (msg.model or {}).get("name") or "?"
        version = (msg.model or {}).get("version") or "?"
        ws = out.get((k, model, version))
        if ws is None:
            ws = out[(k, model, version)] = WindowSet(model, version)
        ws.add(msg)
    return out
