"""What the agent measures: latency sketches, input feature summaries, Prometheus metrics.

Two views of the same events:

- :class:`Window` — one telemetry window (reset each interval): request and error counts,
  a latency sketch (p50/p95/p99/max with ≤ 1 % relative error, bounded memory) and per-feature
  counts over the manifest's reference bin edges. Published over MQTT.
- :class:`Metrics` — cumulative counters and a fixed-bucket latency histogram since start, for
  ``GET /metrics`` (Prometheus text format 0.0.4).

The request path stays cheap: it appends the latency to a list and a copy of the tracked input
values (their bytes) to the current block; whole blocks are binned at once — one
vectorised comparison per bin edge over thousands of values — when a block fills or the window
closes. The summaries are exact: the same counts and moments as binning every request alone.
"""

from __future__ import annotations

import bisect
import itertools
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

import numpy as np

from device_agent.manifest import FeatureProfile, TensorSpec
from device_agent.protocol import FeatureWindow, LatencySummary

__all__ = ["FeatureTracker", "LatencySketch", "Metrics", "Window", "select_features"]

#: values of one feature in a block (samples × its values per sample); a full block is binned at
#: once. 64 Ki values: a feature's values, their float64 scratch and the comparison mask stay
#: within a core's L2 cache while they are binned
BLOCK_VALUES = 1 << 16
#: samples in a block at most
BLOCK_ROWS = 4096
#: values of requests outside the block's layout pending before the request thread bins them
MAX_PENDING_VALUES = 4 << 20
#: latencies buffered before they are folded into the sketch, vectorised
LATENCY_BATCH = 1024
_SIG = 6  # significant digits of floats in telemetry (keeps the payload small)


def _r(x: float | None) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.{_SIG}g}")


class LatencySketch:
    """Log-bucketed quantile sketch (DDSketch-style): relative error ≤ ``alpha``, memory bounded.

    Values ≤ ``floor`` share one bucket. With alpha = 0.01 the range 1 µs … 1 h takes < 1,100 buckets.
    """

    def __init__(self, alpha: float = 0.01, floor: float = 1e-6) -> None:
        self.alpha = alpha
        self.gamma = (1 + alpha) / (1 - alpha)
        self._lg = math.log(self.gamma)
        self.floor = floor
        self.reset()

    def reset(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.sum = 0.0
        self.max = 0.0
        self.min = math.inf

    def add(self, x: float) -> None:
        i = math.ceil(math.log(x) / self._lg) if x > self.floor else math.ceil(math.log(self.floor) / self._lg)
        self.buckets[i] = self.buckets.get(i, 0) + 1
        self.count += 1
        self.sum += x
        if x > self.max:
            self.max = x
        if x < self.min:
            self.min = x

    def add_many(self, values: list[float] | np.ndarray) -> None:
        """``add`` for many values at once (vectorised: the request path only appends to a list)."""
        x = np.asarray(values, dtype=np.float64)
        if not x.size:
            return
        idx = np.ceil(np.log(np.maximum(x, self.floor)) / self._lg).astype(np.int64)
        keys, counts = np.unique(idx, return_counts=True)
        buckets = self.buckets
        for i, c in zip(keys.tolist(), counts.tolist(), strict=True):
            buckets[i] = buckets.get(i, 0) + c
        self.count += x.size
        self.sum += float(x.sum())
        self.max = max(self.max, float(x.max()))
        self.min = min(self.min, float(x.min()))

    def quantile(self, q: float) -> float:
        """Value at quantile ``q`` (0..1); 0.0 when empty."""
        if not self.count:
            return 0.0
        rank = q * (self.count - 1)
        seen = 0
        for i in sorted(self.buckets):
            seen += self.buckets[i]
            if seen > rank:
                value = 2 * self.gamma**i / (self.gamma + 1)
                return min(max(value, self.min), self.max)
        return self.max

    def summary(self, scale: float = 1.0) -> LatencySummary | None:
        if not self.count:
            return None
        return LatencySummary(
            count=self.count, p50=_r(self.quantile(0.5) * scale), p95=_r(self.quantile(0.95) * scale),  # type: ignore[arg-type]
            p99=_r(self.quantile(0.99) * scale), max=_r(self.max * scale), mean=_r(self.sum / self.count * scale),  # type: ignore[arg-type]
        )


def select_features(features: tuple[FeatureProfile, ...], inputs: tuple[TensorSpec, ...], max_payload_bytes: int) -> tuple[list[FeatureProfile], int]:
    """The features to track (manifest order = priority) so that a window stays under the budget.

    Returns (tracked, left out). Features of unknown inputs or out-of-range axes are left out too.
    """
    by_name = {s.name: s for s in inputs}
    budget = max_payload_bytes - 1024  # envelope, latency, errors
    used, out, left = 0, [], 0
    for f in features:
        spec = by_name.get(f.input)
        if spec is None or f.axis >= max(len(spec.shape), 1) or not spec.dtype.startswith(("float", "int", "uint")):
            left += 1
            continue
        if isinstance(spec.shape[f.axis] if spec.shape else None, int) and f.index >= spec.shape[f.axis]:  # type: ignore[operator]
            left += 1
            continue
        # JSON size of one FeatureWindow: keys + 9 numbers + one per bin, generously
        cost = 120 + len(f.name) + 12 * (len(f.edges) - 1) + 4 * 14
        if used + cost > budget:
            left += 1
            continue
        used += cost
        out.append(f)
    return out, left


class _Part:
    """What one input contributes to a block row: per sample, the tracked features' values gathered
    from the flattened sample into consecutive columns, feature after feature.

    ``select`` is None when the features cover the whole sample in order (a copy of the sample),
    a slice when the gather is an arithmetic progression (strided channels: basic indexing, a view),
    else an index array."""

    __slots__ = ("columns", "dtype", "features", "name", "sample_shape", "select", "size", "spans")

    def __init__(self, name: str, sample_shape: tuple[int, ...], dtype: np.dtype, features: list[tuple[int, FeatureProfile]],
                 max_values: int) -> None:
        self.name = name
        self.sample_shape = sample_shape
        self.dtype = dtype
        self.size = math.prod(sample_shape)
        base = np.arange(self.size).reshape(sample_shape)
        sels: list[np.ndarray] = []
        self.features: list[int] = []
        for j, f in features:
            if f.axis == 0 or not sample_shape:  # the profile's "whole tensor is one feature" (1-D and scalar inputs)
                sel = base.reshape(-1)
            elif f.axis - 1 < len(sample_shape) and f.index < sample_shape[f.axis - 1]:
                sel = base[(slice(None),) * (f.axis - 1) + (f.index,)].reshape(-1)
            else:  # the index lies beyond this request's (symbolic) dim: nothing to bin
                continue
            if sel.size > max_values:  # large images: a fixed stride per sample
                sel = sel[:: _stride(sel.size, max_values, sample_shape[-1])]
            if sel.size:
                sels.append(sel)
                self.features.append(j)
        bounds = np.cumsum([0] + [s.size for s in sels])
        self.spans = [(int(a), int(b)) for a, b in itertools.pairwise(bounds)]
        gather = np.concatenate(sels) if sels else np.zeros(0, np.intp)
        self.columns = int(gather.size)
        self.select: slice | np.ndarray | None = None
        if not np.array_equal(gather, np.arange(self.size)):
            self.select = _as_slice(gather)

    def gather(self, x: np.ndarray) -> np.ndarray:
        """The (samples, columns) values of ``x`` (a view when it can be)."""
        flat = x.reshape(x.shape[0] if x.ndim else 1, self.size)
        return flat if self.select is None else flat[:, self.select]


def _stride(size: int, max_values: int, row: int) -> int:
    """A stride that keeps between half of and ``max_values`` of ``size`` values and is coprime with the
    row length: a stride sharing a factor with the image width would sample the same few columns of
    every row (stride 196 on a 224-wide image visits 8 of its 224 columns; 197 or 343 visit all)."""
    lo = -(-size // max_values)
    coprime = [step for step in range(lo, 2 * lo + 1) if row <= 1 or math.gcd(step, row) == 1]
    # one that divides the plane keeps consecutive channels one arithmetic progression: a slice, not an index array
    return next((step for step in coprime if size % step == 0), coprime[0] if coprime else lo)


def _as_slice(idx: np.ndarray) -> slice | np.ndarray:
    if idx.size == 1:
        return slice(int(idx[0]), int(idx[0]) + 1)
    step = int(idx[1] - idx[0])
    if step > 0 and bool((np.diff(idx) == step).all()):
        return slice(int(idx[0]), int(idx[-1]) + 1, step)
    return idx


class _Layout:
    """Where the tracked features sit in a block, for one set of per-sample shapes and dtypes."""

    __slots__ = ("key", "parts")

    def __init__(self, key: tuple, parts: list[_Part]) -> None:
        self.key = key
        self.parts = parts

    def rows(self, xs: list[np.ndarray]) -> int | None:
        """Samples in the request when all its tracked inputs agree (else None)."""
        rows = {x.shape[0] if x.ndim else 1 for x in xs}
        return rows.pop() if len(rows) == 1 else None


class _Block:
    """Up to ``cap`` samples' feature values, binned at once when full.

    Per part, the bytes of each request's (samples, columns) values, joined when the block is
    binned: ``x.tobytes()`` and a list append take ~70 ns for a small sample, 2.5x less than
    assigning into a preallocated array (numpy's indexing costs more than copying 256 bytes).
    ``fast`` (one tracked input): a one-sample request is appended without building a layout."""

    __slots__ = ("cap", "chunks", "dtype", "fast", "layout", "name", "one", "rows", "select")

    def __init__(self, layout: _Layout, *, single_input: bool) -> None:
        self.layout = layout
        cols = sum(p.columns for p in layout.parts)
        widest = max(b - a for p in layout.parts for a, b in p.spans)
        # a feature's values in a block (the binning scratch) stay ≤ BLOCK_VALUES, the block itself ≤ 4x that
        self.cap = max(1, min(BLOCK_ROWS, BLOCK_VALUES // widest, 4 * BLOCK_VALUES // cols))
        self.chunks: list[list[bytes]] = [[] for _ in layout.parts]
        self.rows = 0
        part = layout.parts[0]
        self.fast = single_input and len(layout.parts) == 1
        self.name, self.dtype, self.one, self.select = part.name, part.dtype, (1, *part.sample_shape), part.select

    def put(self, xs: list[np.ndarray], start: int, count: int) -> None:
        """Copy samples ``start:start+count`` of the request."""
        for chunks, part, x in zip(self.chunks, self.layout.parts, xs, strict=True):
            chunks.append(part.gather(x)[start:start + count].tobytes())
        self.rows += count

    def values(self) -> list[np.ndarray]:
        """Per part, the (rows, columns) values (read-only: over the joined bytes)."""
        return [np.frombuffer(b"".join(c), p.dtype).reshape(self.rows, p.columns) for c, p in zip(self.chunks, self.layout.parts, strict=True)]


class FeatureTracker:
    """Per-feature bin counts and moments over the reference edges, accumulated until ``take``.

    Values arrive in blocks (:class:`Window` fills them) or whole batches (:meth:`add`); either
    way each feature is binned with one vectorised pass per edge over many samples at once."""

    def __init__(self, features: list[FeatureProfile], *, max_values_per_feature: int = 256) -> None:
        self.features = features
        self.max_values = max_values_per_feature
        self._edges = [np.asarray(f.edges, dtype=np.float64) for f in features]
        # float32 values are compared with float32 thresholds (half the memory traffic: ~25 % of the
        # binning time): for a float32 v, v >= e exactly when v >= (the least float32 >= e), and
        # v > e exactly when v > (the greatest float32 <= e), so the counts are the float64 ones
        self._ge32 = [_f32_bound(e[:-1], up=True) for e in self._edges]
        self._gt32 = [_f32_bound(e[-1:], up=False)[0] for e in self._edges]
        self._inputs = list(dict.fromkeys(f.input for f in features))
        self._layouts: dict[tuple, _Layout] = {}
        self._mask = np.empty(0, bool)
        self._dev = np.empty(0, np.float64)
        self.reset()

    def reset(self) -> None:
        k = len(self.features)
        self.n = np.zeros(k, np.int64)
        self.nan = np.zeros(k, np.int64)
        self.under = np.zeros(k, np.int64)
        self.over = np.zeros(k, np.int64)
        self.counts = [np.zeros(len(e) - 1, np.int64) for e in self._edges]
        self.fin = np.zeros(k, np.int64)
        self.mean = np.zeros(k, np.float64)
        self.m2 = np.zeros(k, np.float64)
        self.min = np.full(k, np.inf)
        self.max = np.full(k, -np.inf)
        self.samples = 0

    @property
    def single_input(self) -> bool:
        return len(self._inputs) == 1

    def layout(self, arrays: Mapping[str, np.ndarray]) -> _Layout | None:
        """The block layout of a request's tracked inputs (cached per shapes and dtypes); None when
        no tracked feature can be read from them."""
        xs = [(name, arrays[name]) for name in self._inputs if name in arrays]
        key = tuple((name, x.ndim, x.shape[1:], x.dtype) for name, x in xs)
        lay = self._layouts.get(key)
        if lay is None:
            parts = []
            for name, x in xs:
                feats = [(j, f) for j, f in enumerate(self.features) if f.input == name]
                part = _Part(name, tuple(x.shape[1:]), x.dtype, feats, self.max_values)
                if part.columns:
                    parts.append(part)
            if len(self._layouts) >= 64:  # symbolic dims that vary per request: keep the cache bounded
                self._layouts.clear()
            lay = self._layouts[key] = _Layout(key, parts)
        return lay if lay.parts else None

    def add(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Summarise a batch (source layout, sample axis first)."""
        lay = self.layout(arrays)
        if lay is not None:
            values = [p.gather(arrays[p.name]) for p in lay.parts]
            self.add_block(lay, values, values[0].shape[0])

    def add_block(self, layout: _Layout, values: list[np.ndarray], samples: int) -> None:
        """Add (samples, columns) values per part of ``layout`` (a filled block or gathered requests)."""
        self.samples += samples
        for part, v in zip(layout.parts, values, strict=True):
            if v.dtype != np.float32 and v.dtype != np.float64:
                v = v.astype(np.float64)  # ints (exact below 2**53), float16, byte-swapped floats
            for j, (a, b) in zip(part.features, part.spans, strict=True):
                step = max(1, BLOCK_VALUES // (b - a))  # bounds the scratch memory for a large backlog
                for r in range(0, v.shape[0], step):
                    chunk = v[r:r + step, a:b]
                    # one of several features: its columns are strided; a contiguous copy (cheap) makes
                    # the dozen passes over it ~1.5x faster
                    self._add_values(j, chunk if chunk.flags.c_contiguous else np.ascontiguousarray(chunk))

    def _scratch(self, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        # reused, never reallocated per block: a fresh ~1 MB temporary costs more in page faults
        # than the binning itself
        size = math.prod(shape)
        if self._mask.size < size:
            self._mask = np.empty(size, bool)
            self._dev = np.empty(size, np.float64)
        return self._mask[:size].reshape(shape), self._dev[:size].reshape(shape)

    def _add_values(self, j: int, v: np.ndarray) -> None:
        """Fold feature ``j``'s values (float32 or float64, any shape) into the summary."""
        n = v.size
        self.n[j] += n
        mask, dev = self._scratch(v.shape)
        np.copyto(dev, v)  # float64: the sums and deviations are computed in float64
        x = dev
        with np.errstate(over="ignore", invalid="ignore"):
            total = float(x.sum())
        if not math.isfinite(total):  # NaN/inf (or an overflow) present: keep the finite values only
            ok = np.isfinite(v)
            v, x = v[ok], x[ok]
            mask = mask[ok]
            with np.errstate(over="ignore", invalid="ignore"):
                total = float(x.sum())
        self.nan[j] += n - v.size
        if not v.size:
            return
        e = self._edges[j]
        f32 = v.dtype == np.float32
        # bins are [e[i], e[i+1]) except the last, which is closed (as in np.histogram); below e[0] is
        # the underflow, above e[-1] the overflow
        over = int(np.count_nonzero(np.greater(v, self._gt32[j] if f32 else e[-1], out=mask)))
        if len(e) <= 64:
            # few edges (the profile's ~10 quantile bins): one vectorised comparison per edge is ~10x
            # faster than a binary search per value
            ge = [int(np.count_nonzero(np.greater_equal(v, t, out=mask))) for t in (self._ge32[j] if f32 else e[:-1])]
            inside = np.array([*ge, over], np.int64)  # ge[i] = values ≥ e[i]; the last bin ends at "> e[-1]"
            self.counts[j] += inside[:-1] - inside[1:]
            self.under[j] += v.size - ge[0]
        else:
            slots = np.bincount(np.searchsorted(e, x.reshape(-1), side="right"), minlength=len(e) + 1)
            slots[-2] += int(np.count_nonzero(x == e[-1]))
            self.counts[j] += slots[1:-1]
            self.under[j] += int(slots[0])
        self.over[j] += over
        lo, hi = float(v.min()), float(v.max())
        # Chan et al.'s parallel update of mean and M2 (stable for long windows)
        n_b = v.size
        mean_b = total / n_b
        x -= mean_b  # in place: x is scratch (or the finite values' copy)
        m2_b = float(np.square(x, out=x).sum())  # not np.dot: BLAS would wake its own threads next to ORT's
        n_a = int(self.fin[j])
        n_ab = n_a + n_b
        delta = mean_b - float(self.mean[j])
        self.mean[j] += delta * n_b / n_ab
        self.m2[j] += m2_b + delta * delta * n_a * n_b / n_ab
        self.fin[j] = n_ab
        self.min[j] = min(float(self.min[j]), lo)
        self.max[j] = max(float(self.max[j]), hi)

    def take(self) -> tuple[list[FeatureWindow], int]:
        """Summaries since the last take, and the number of samples they cover; then reset."""
        out = []
        for j, f in enumerate(self.features):
            has = self.fin[j] > 0
            out.append(FeatureWindow(
                name=f.name, n=int(self.n[j]), counts=[int(c) for c in self.counts[j]], under=int(self.under[j]),
                over=int(self.over[j]), nan=int(self.nan[j]),
                min=_r(float(self.min[j])) if has else None, max=_r(float(self.max[j])) if has else None,
                mean=_r(float(self.mean[j])) if has else None, std=_r(math.sqrt(self.m2[j] / self.fin[j])) if has else None,
            ))
        samples = self.samples
        self.reset()
        return out, samples


def _f32_bound(edges: np.ndarray, *, up: bool) -> list[np.float32]:
    """Per edge, the least float32 ≥ it (``up``) or the greatest float32 ≤ it."""
    with np.errstate(over="ignore"):
        b = edges.astype(np.float32)
    wrong = b.astype(np.float64) < edges if up else b.astype(np.float64) > edges
    b[wrong] = np.nextafter(b[wrong], np.float32(np.inf if up else -np.inf))
    return list(b)


class Window:
    """One telemetry window; thread-safe. ``close()`` returns the window's content and starts the next.

    Request path: :meth:`record` counts the request, appends its latency to a list and, given the
    inputs, a copy of their tracked values to the current block (``x.tobytes()`` in the common
    case), all under one lock. A full block is binned by the request that filled it, outside the
    request lock; a partial block when the window closes. Block boundaries depend on the samples
    alone, so a window's summaries are the same however its requests were batched.
    """

    def __init__(self, tracker: FeatureTracker | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self.tracker = tracker
        self.clock = clock
        self._lock = threading.Lock()  # the request path: counters, latencies, the block
        self._drain_lock = threading.Lock()  # the binning: tracker state, one thread at a time
        self._block: _Block | None = None  # where requests of the block's layout go
        self._full: list[_Block] = []
        # requests of another layout (symbolic dims, absent inputs): gathered per request, binned in drain
        self._odd: list[tuple[_Layout, list[np.ndarray], int]] = []
        self._odd_values = 0
        self._latencies: list[float] = []
        self.latency = LatencySketch()
        self.start = clock()
        self.requests = 0
        self.errors: dict[str, int] = {}

    def record(self, latency_s: float | None, *, error: str | None = None, inputs: Mapping[str, np.ndarray] | None = None) -> None:
        """Count a request: its latency (None when it failed), its error kind, and — when ``inputs``
        are given — their tracked features (as :meth:`observe`, in the same critical section)."""
        with self._lock:
            self.requests += 1
            if latency_s is not None:
                lat = self._latencies
                lat.append(latency_s)
                if len(lat) >= LATENCY_BATCH:
                    self.latency.add_many(lat)
                    lat.clear()
            if error:
                self.errors[error] = self.errors.get(error, 0) + 1
            if inputs is None:
                return
            block = self._block
            if block is not None and block.fast:  # the hot path: one sample of the block's shape
                x = inputs.get(block.name)
                if x is not None and x.shape == block.one and x.dtype is block.dtype and block.rows + 1 < block.cap:
                    block.chunks[0].append(x.tobytes() if block.select is None else x.reshape(-1)[block.select].tobytes())
                    block.rows += 1
                    return
        self._observe(inputs)

    def observe(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Copy the tracked features of validated inputs (source layout, sample axis first) for
        this window's summaries. The values are copied (the caller may reuse its arrays);
        untracked inputs are ignored."""
        self._observe(arrays)

    def _observe(self, arrays: Mapping[str, np.ndarray]) -> None:
        tracker = self.tracker
        if tracker is None or not tracker.features:
            return
        layout = tracker.layout(arrays)
        if layout is None:
            return
        xs = [arrays[p.name] for p in layout.parts]
        rows = layout.rows(xs)
        with self._lock:
            block = self._block
            if block is None and rows is not None:
                block = self._block = self._new_block(layout)
            if block is not None and rows is not None and block.layout.key == layout.key:
                done = 0
                while done < rows:  # a batch larger than the room left spills into the next block
                    count = min(rows - done, block.cap - block.rows)
                    block.put(xs, done, count)
                    done += count
                    if block.rows == block.cap:
                        self._full.append(block)
                        block = self._block = self._new_block(layout)
                pending = bool(self._full)
            else:
                values = [np.array(p.gather(x)) for p, x in zip(layout.parts, xs, strict=True)]  # copies
                self._odd.append((layout, values, values[0].shape[0]))
                self._odd_values += sum(v.size for v in values)
                pending = self._odd_values > MAX_PENDING_VALUES
        if pending:
            self.drain()

    def _new_block(self, layout: _Layout) -> _Block:
        return _Block(layout, single_input=self.tracker is not None and self.tracker.single_input)

    def drain(self) -> None:
        """Bin the full blocks and the odd requests waiting (the current block keeps filling)."""
        if self.tracker is None:
            return
        with self._drain_lock:
            with self._lock:
                full, self._full = self._full, []
                odd, self._odd, self._odd_values = self._odd, [], 0
            self._bin(full, odd)

    def _bin(self, blocks: list[_Block], odd: list[tuple[_Layout, list[np.ndarray], int]]) -> None:
        tracker = self.tracker
        for b in blocks:
            tracker.add_block(b.layout, b.values(), b.rows)
        groups: dict[tuple, list[tuple[_Layout, list[np.ndarray], int]]] = {}
        for item in odd:
            groups.setdefault(item[0].key, []).append(item)
        for items in groups.values():
            values = [np.concatenate([it[1][p] for it in items]) for p in range(len(items[0][0].parts))]
            tracker.add_block(items[0][0], values, sum(it[2] for it in items))

    def close(self) -> dict[str, Any]:
        """Snapshot and reset; bins what is pending. Returns the fields of a TelemetryMessage (without envelope)."""
        with self._drain_lock:
            with self._lock:  # one critical section: the counters and the features cover the same requests
                end = self.clock()
                full, self._full = self._full, []
                block = self._block
                if block is not None and block.rows:
                    full.append(block)
                    self._block = self._new_block(block.layout)
                odd, self._odd, self._odd_values = self._odd, [], 0
                if self._latencies:
                    self.latency.add_many(self._latencies)
                    self._latencies.clear()
                out = {
                    "window": {"start": round(self.start, 3), "end": round(end, 3)},
                    "requests": self.requests,
                    "errors": dict(self.errors),
                    "latency_ms": self.latency.summary(scale=1000.0),
                }
                self.start = end
                self.requests = 0
                self.errors = {}
                self.latency.reset()
            if self.tracker is not None:
                self._bin(full, odd)
            out["features"], out["samples"] = self.tracker.take() if self.tracker else ([], 0)
        return out


# --- Prometheus ----------------------------------------------------------------------------------

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Cumulative counters for ``/metrics``; gauges are read from callbacks at scrape time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.time()
        self.predictions = 0
        self.samples = 0
        self.errors: dict[str, int] = {}
        self.http: dict[tuple[str, str, int], int] = {}
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.latency_count = 0
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}
        self.info: Callable[[], dict[str, str]] = dict

    def prediction(self, latency_s: float, samples: int) -> None:
        with self._lock:
            self.predictions += 1
            self.samples += samples
            self.latency_sum += latency_s
            self.latency_count += 1
            self.buckets[bisect.bisect_left(LATENCY_BUCKETS, latency_s)] += 1

    def error(self, kind: str) -> None:
        with self._lock:
            self.errors[kind] = self.errors.get(kind, 0) + 1

    def http_request(self, method: str, path: str, code: int) -> None:
        with self._lock:
            key = (method, path, code)
            self.http[key] = self.http.get(key, 0) + 1

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self.gauges[name] = (help_text, read)

    def render(self) -> str:
        """Prometheus text exposition format."""
        with self._lock:
            lines = [
                "# HELP edgekit_agent_predictions_total Prediction requests answered.",
                "# TYPE edgekit_agent_predictions_total counter",
                f"edgekit_agent_predictions_total {self.predictions}",
                "# HELP edgekit_agent_prediction_samples_total Samples (batch rows) predicted.",
                "# TYPE edgekit_agent_prediction_samples_total counter",
                f"edgekit_agent_prediction_samples_total {self.samples}",
                "# HELP edgekit_agent_errors_total Rejected or failed prediction requests by kind.",
                "# TYPE edgekit_agent_errors_total counter",
            ]
            lines += [f'edgekit_agent_errors_total{{kind="{_esc(k)}"}} {v}' for k, v in sorted(self.errors.items())]
            lines += ["# HELP edgekit_agent_http_requests_total HTTP requests by method, route and status code.",
                      "# TYPE edgekit_agent_http_requests_total counter"]
            lines += [f'edgekit_agent_http_requests_total{{method="{m}",path="{_esc(p)}",code="{c}"}} {v}'
                      for (m, p, c), v in sorted(self.http.items())]
            lines += ["# HELP edgekit_agent_inference_seconds Inference latency (runtime only).",
                      "# TYPE edgekit_agent_inference_seconds histogram"]
            cum = 0
            for b, n in zip(LATENCY_BUCKETS, self.buckets, strict=False):
                cum += n
                lines.append(f'edgekit_agent_inference_seconds_bucket{{le="{b}"}} {cum}')
            lines.append(f'edgekit_agent_inference_seconds_bucket{{le="+Inf"}} {self.latency_count}')
            lines.append(f"edgekit_agent_inference_seconds_sum {self.latency_sum:.9f}")
            lines.append(f"edgekit_agent_inference_seconds_count {self.latency_count}")
        info = self.info()
        if info:
            labels = ",".join(f'{k}="{_esc(str(v))}"' for k, v in info.items())
            lines += ["# HELP edgekit_agent_model_info The model being served.", "# TYPE edgekit_agent_model_info gauge",
                      f"edgekit_agent_model_info{{{labels}}} 1"]
        lines += ["# HELP edgekit_agent_start_time_seconds Agent start, unix time.", "# TYPE edgekit_agent_start_time_seconds gauge",
                  f"edgekit_agent_start_time_seconds {self.started:.3f}"]
        for name, (help_text, read) in sorted(self.gauges.items()):
            try:
                value = float(read())
            except Exception:  # a gauge must never break the scrape
                value = math.nan
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value:g}"]
        return "\n".join(lines) + "\n"

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"predictions": self.predictions, "samples": self.samples, "errors": dict(self.errors)}


def _esc(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def feature_dicts(features: list[FeatureWindow]) -> list[dict[str, Any]]:
    return [asdict(f) for f in features]
