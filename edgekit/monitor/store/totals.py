"""Running totals: what telemetry windows add up to, in a form that adds *and subtracts*.

A :class:`Totals` holds, for one device (or group) and one model version, the sums of its windows:
windows, samples, requests, errors, latency (measured requests, the sum of window means, and a
histogram of window p95s weighted by their requests), late labels (labelled, correct) and, per
feature, the cells ``[under, bin 0 … bin k-1, over]``, NaN count, values, finite values and the
power sums Σx and Σx² of the finite values. Every field is a sum, so the store keeps totals
*cumulative* (one row per minute: everything up to that minute) and the windows of any span of
time are one subtraction, however long the span (:mod:`edgekit.monitor.store.writer`,
:mod:`edgekit.monitor.store.reads`). Minimum and maximum are not sums: totals do not carry them.

:class:`Layout` names the features of a vector (name and bin count, in order); a layout only grows
(a feature seen later is appended), so an older, shorter vector is the prefix of a newer one.
Vectors are stored as zlib-compressed little-endian int64 and float64 arrays (:meth:`Totals.encode`),
byte-shuffled (format 2: the first bytes of every value, then the second bytes, …): the high bytes
of counts are zeros and compress to almost nothing, ~390 bytes a row instead of ~490 (format 1,
unshuffled, is still read).
"""

from __future__ import annotations

import functools
import json
import math
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from device_agent.contract.protocol import TelemetryMessage
from edgekit.monitor.windows import FeatureSummary, WindowSet

__all__ = ["HEADER", "P95_BUCKETS", "Layout", "Totals", "p95_bucket"]

#: the header's integer fields, in vector order (the p95 histogram follows them)
HEADER = ("windows", "samples", "requests", "errors", "lat_count", "labelled", "correct")
#: window p95 latencies are counted in log buckets: [0, 0.01 ms), then ×1.6 per bucket (the last is open: ≥ 21 s)
P95_BUCKETS = 32
P95_BASE_MS = 0.01
P95_RATIO = 1.6
_H = len(HEADER) + P95_BUCKETS
_PER_FEATURE = 5  # under and over around the bins, then nan, n, finite
_MAGIC = 2  # 1: the values' bytes in order; 2: byte-shuffled


def p95_bucket(ms: float) -> int:
    """The histogram bucket of a window's p95 latency (milliseconds)."""
    if not ms > P95_BASE_MS:  # also NaN
        return 0
    return min(P95_BUCKETS - 1, 1 + int(math.log(ms / P95_BASE_MS) / math.log(P95_RATIO)))


@dataclass(frozen=True)
class Layout:
    """The features of a totals vector: (name, bins) in vector order."""

    features: tuple[tuple[str, int], ...] = ()

    def extended(self, msg: TelemetryMessage) -> Layout:
        """This layout plus the features of ``msg`` it does not have yet (itself when there are none)."""
        known = {n for n, _ in self.features}
        new = tuple((f.name, len(f.counts)) for f in msg.features if f.name not in known)
        return Layout(self.features + new) if new else self

    def sizes(self, n_features: int | None = None) -> tuple[int, int]:
        """(ints, floats) of a vector holding the first ``n_features`` features (all by default)."""
        return _sizes(self.features, len(self.features) if n_features is None else n_features)

    def offsets(self) -> dict[str, tuple[int, int, int]]:
        """Per feature: (index in the layout, offset of its cells in the ints, bins)."""
        return _offsets(self.features)

    def to_json(self) -> str:
        return json.dumps([[n, b] for n, b in self.features], separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Layout:
        if cls is Layout:  # every series of a model version stores the same few layouts: a thousand devices' spans parse one
            return _layout(text)
        return cls(tuple((str(n), int(b)) for n, b in json.loads(text)))


class Totals:
    """Sums of telemetry windows over one layout (see the module docs). Mutable: :meth:`add` works in place."""

    __slots__ = ("floats", "ints", "layout")

    def __init__(self, layout: Layout, ints: np.ndarray | None = None, floats: np.ndarray | None = None) -> None:
        n_int, n_float = layout.sizes()
        self.layout = layout
        self.ints = np.zeros(n_int, np.int64) if ints is None else _padded(ints, n_int)
        self.floats = np.zeros(n_float, np.float64) if floats is None else _padded(floats, n_float)

    # --- building -----------------------------------------------------------------------------------

    @classmethod
    def of_window(cls, msg: TelemetryMessage, layout: Layout) -> Totals:
        """One window's own totals (features outside ``layout`` or on other bins are left out, as a WindowSet does)."""
        t = cls(layout)
        ints, floats = t.ints, t.floats
        ints[0], ints[1], ints[2], ints[3] = 1, msg.samples, msg.requests, sum(msg.errors.values())
        lat = msg.latency_ms
        if lat is not None and lat.count:
            ints[4] = lat.count
            floats[0] = lat.mean * lat.count
            ints[len(HEADER) + p95_bucket(lat.p95)] = lat.count
        offsets = layout.offsets()
        for f in msg.features:
            place = offsets.get(f.name)
            if place is None or place[2] != len(f.counts):
                continue
            i, at, bins = place
            ints[at] = f.under
            ints[at + 1:at + 1 + bins] = f.counts
            fin = f.n - f.nan
            ints[at + 1 + bins:at + bins + 5] = (f.over, f.nan, f.n, fin)
            if fin > 0 and f.mean is not None:
                std = f.std or 0.0
                floats[1 + 2 * i] = f.mean * fin
                floats[2 + 2 * i] = (std * std + f.mean * f.mean) * fin
        return t

    @classmethod
    def from_window_set(cls, ws: WindowSet) -> Totals:
        """The totals a window set stands for (its features' moments as power sums; no latency or labels)."""
        layout = Layout(tuple((n, len(f.counts)) for n, f in ws.features.items()))
        t = cls(layout)
        t.ints[0], t.ints[1], t.ints[2] = ws.windows, ws.samples, ws.requests
        for name, (i, at, bins) in layout.offsets().items():
            f = ws.features[name]
            t.ints[at] = f.under
            t.ints[at + 1:at + 1 + bins] = f.counts
            t.ints[at + bins + 1:at + bins + 5] = (f.over, f.nan, f.n, f.finite)
            t.floats[1 + 2 * i] = f.mean * f.finite
            t.floats[2 + 2 * i] = f.m2 + f.mean * f.mean * f.finite
        return t

    def add_accuracy(self, labelled: int, correct: int) -> None:
        self.ints[5] += labelled
        self.ints[6] += correct

    def copy(self) -> Totals:
        return Totals(self.layout, self.ints.copy(), self.floats.copy())

    def add(self, other: Totals, sign: int = 1) -> Totals:
        """``self += sign · other`` (aligned by feature name when the layouts differ); returns self."""
        if other.layout != self.layout and not _is_prefix(other.layout, self.layout):
            self._grow(other.layout)
            other = other.aligned(self.layout)
        n_int, n_float = len(other.ints), len(other.floats)
        if sign > 0:
            self.ints[:n_int] += other.ints
            self.floats[:n_float] += other.floats
        else:
            self.ints[:n_int] -= other.ints
            self.floats[:n_float] -= other.floats
        return self

    def minus(self, other: Totals | None) -> Totals:
        """A new totals: ``self - other`` (``other`` None: a copy)."""
        out = self.copy()
        return out if other is None else out.add(other, -1)

    def aligned(self, layout: Layout) -> Totals:
        """These totals over ``layout`` (a superset of this one's features, in any order)."""
        out = Totals(layout)
        out.ints[:_H] = self.ints[:_H]
        out.floats[0] = self.floats[0]
        mine, theirs = self.layout.offsets(), layout.offsets()
        for name, (i, at, bins) in mine.items():
            j, to, b = theirs[name]
            if b == bins:
                out.ints[to:to + bins + _PER_FEATURE] = self.ints[at:at + bins + _PER_FEATURE]
                out.floats[1 + 2 * j:3 + 2 * j] = self.floats[1 + 2 * i:3 + 2 * i]
        return out

    def _grow(self, other: Layout) -> None:
        known = {n for n, _ in self.layout.features}
        new = tuple(f for f in other.features if f[0] not in known)
        if new:
            grown = self.aligned(Layout(self.layout.features + new))
            self.layout, self.ints, self.floats = grown.layout, grown.ints, grown.floats

    # --- reading ------------------------------------------------------------------------------------

    def __getattr__(self, name: str) -> int:
        if name in HEADER:
            return int(self.ints[HEADER.index(name)])
        raise AttributeError(name)

    @property
    def empty(self) -> bool:
        return not (self.ints[0] or self.ints[5])

    @property
    def latency_mean_ms(self) -> float | None:
        return float(self.floats[0] / self.ints[4]) if self.ints[4] else None

    def latency_p95_ms(self) -> float | None:
        """The request-weighted 95th percentile of the windows' p95 (a bucket's geometric middle; None without latencies)."""
        hist = self.ints[len(HEADER):_H]
        total = int(hist.sum())
        if not total:
            return None
        i = int(np.searchsorted(np.cumsum(hist), 0.95 * total))
        return P95_BASE_MS * P95_RATIO ** (i - 0.5) if i else P95_BASE_MS / 2

    def feature(self, name: str) -> FeatureSummary | None:
        place = self.layout.offsets().get(name)
        return None if place is None else self._feature(name, *place, self.floats.tolist())

    def _feature(self, name: str, i: int, at: int, bins: int, floats: list[float]) -> FeatureSummary:
        tail = self.ints[at + bins + 1:at + bins + 5].tolist()  # over, nan, n, finite
        fin = tail[3]
        s1, s2 = floats[1 + 2 * i], floats[2 + 2 * i]
        mean = s1 / fin if fin else 0.0
        m2 = max(0.0, s2 - s1 * mean) if fin else 0.0
        return FeatureSummary(name, self.ints[at + 1:at + 1 + bins].copy(), int(self.ints[at]), tail[0], tail[1], tail[2], fin, mean, m2)

    def window_set(self, model: str, version: str, *, devices: Iterable[str] = (), start: float | None = None,
                   end: float | None = None) -> WindowSet:
        """The :class:`WindowSet` these totals stand for (every feature of the layout, as the windows carried them)."""
        ws = WindowSet(model, version, samples=self.samples, requests=self.requests, windows=self.windows, devices=set(devices),
                       start=start, end=end)
        if self.windows:
            floats = self.floats.tolist()
            for name, (i, at, bins) in self.layout.offsets().items():
                ws.features[name] = self._feature(name, i, at, bins, floats)
        return ws

    # --- storage ------------------------------------------------------------------------------------

    def encode(self) -> bytes:
        head = struct.pack("<BH", _MAGIC, len(self.layout.features))
        values = np.frombuffer(self.ints.astype("<i8").tobytes() + self.floats.astype("<f8").tobytes(), np.uint8)
        return zlib.compress(head + values.reshape(-1, 8).T.tobytes(), 1)

    @classmethod
    def decode(cls, data: bytes, layout: Layout) -> Totals:
        """Totals stored with (a prefix of) ``layout``."""
        raw = zlib.decompress(data)
        magic, n_features = struct.unpack_from("<BH", raw)
        if magic not in (1, 2) or n_features > len(layout.features):
            raise ValueError(f"stored totals have format {magic} and {n_features} features; this layout has {len(layout.features)}")
        if magic == 2:
            raw = raw[:3] + np.frombuffer(raw, np.uint8, offset=3).reshape(8, -1).T.tobytes()
        n_int, n_float = layout.sizes(n_features)
        ints = np.frombuffer(raw, "<i8", n_int, 3)
        floats = np.frombuffer(raw, "<f8", n_float, 3 + 8 * n_int)
        return cls(layout, ints, floats)


@functools.lru_cache(maxsize=256)
def _layout(text: str) -> Layout:
    return Layout(tuple((str(n), int(b)) for n, b in json.loads(text)))


@functools.lru_cache(maxsize=256)
def _sizes(features: tuple[tuple[str, int], ...], n: int) -> tuple[int, int]:
    return _H + sum(b + _PER_FEATURE for _, b in features[:n]), 1 + 2 * min(n, len(features))


@functools.lru_cache(maxsize=256)
def _offsets(features: tuple[tuple[str, int], ...]) -> dict[str, tuple[int, int, int]]:
    out, at = {}, _H
    for i, (name, bins) in enumerate(features):
        out[name] = (i, at, bins)
        at += bins + _PER_FEATURE
    return out


def _padded(a: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n, a.dtype)
    out[:len(a)] = a
    return out


def _is_prefix(short: Layout, long: Layout) -> bool:
    return long.features[:len(short.features)] == short.features
