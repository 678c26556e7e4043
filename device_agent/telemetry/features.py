"""Input feature summaries: per-feature counts on the manifest's reference bins, and moments.

:class:`FeatureTracker` accumulates (samples, columns) blocks of the tracked features' values —
one vectorised comparison per bin edge over thousands of values at once — until ``take``. The
summaries are exact: the same counts and moments as binning every request alone.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from device_agent.contract.manifest import FeatureProfile, TensorSpec
from device_agent.contract.protocol import FeatureWindow
from device_agent.contract.types import Array
from device_agent.telemetry.sketch import rounded

__all__ = ["BLOCK_VALUES", "FeatureTracker", "Layout", "LayoutKey", "select_features"]

#: values of one feature in a block (samples × its values per sample); a full block is binned at
#: once. 64 Ki values: a feature's values, their float64 scratch and the comparison mask stay
#: within a core's L2 cache while they are binned
BLOCK_VALUES = 1 << 16
#: a request's tracked inputs as a block layout sees them: (name, rank, per-sample shape, dtype) each
LayoutKey = tuple[tuple[str, int, tuple[int, ...], "np.dtype[Any]"], ...]


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

    def __init__(self, name: str, sample_shape: tuple[int, ...], dtype: np.dtype[Any], features: list[tuple[int, FeatureProfile]],
                 max_values: int) -> None:
        self.name = name
        self.sample_shape = sample_shape
        self.dtype = dtype
        self.size = math.prod(sample_shape)
        base = np.arange(self.size).reshape(sample_shape)
        sels: list[Array] = []
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
        self.select: slice | Array | None = None
        if not np.array_equal(gather, np.arange(self.size)):
            self.select = _as_slice(gather)

    def gather(self, x: Array) -> Array:
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


def _as_slice(idx: Array) -> slice | Array:
    if idx.size == 1:
        return slice(int(idx[0]), int(idx[0]) + 1)
    step = int(idx[1] - idx[0])
    if step > 0 and bool((np.diff(idx) == step).all()):
        return slice(int(idx[0]), int(idx[-1]) + 1, step)
    return idx


class Layout:
    """Where the tracked features sit in a block, for one set of per-sample shapes and dtypes."""

    __slots__ = ("key", "parts")

    def __init__(self, key: LayoutKey, parts: list[_Part]) -> None:
        self.key = key
        self.parts = parts

    def rows(self, xs: list[Array]) -> int | None:
        """Samples in the request when all its tracked inputs agree (else None)."""
        rows = {x.shape[0] if x.ndim else 1 for x in xs}
        return rows.pop() if len(rows) == 1 else None



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
        self._layouts: dict[LayoutKey, Layout] = {}
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

    def layout(self, arrays: Mapping[str, Array]) -> Layout | None:
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
            lay = self._layouts[key] = Layout(key, parts)
        return lay if lay.parts else None

    def add(self, arrays: Mapping[str, Array]) -> None:
        """Summarise a batch (source layout, sample axis first)."""
        lay = self.layout(arrays)
        if lay is not None:
            values = [p.gather(arrays[p.name]) for p in lay.parts]
            self.add_block(lay, values, values[0].shape[0])

    def add_block(self, layout: Layout, values: list[Array], samples: int) -> None:
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

    def _scratch(self, shape: tuple[int, ...]) -> tuple[Array, Array]:
        # reused, never reallocated per block: a fresh ~1 MB temporary costs more in page faults
        # than the binning itself
        size = math.prod(shape)
        if self._mask.size < size:
            self._mask = np.empty(size, bool)
            self._dev = np.empty(size, np.float64)
        return self._mask[:size].reshape(shape), self._dev[:size].reshape(shape)

    def _add_values(self, j: int, v: Array) -> None:
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
                min=rounded(float(self.min[j])) if has else None, max=rounded(float(self.max[j])) if has else None,
                mean=rounded(float(self.mean[j])) if has else None, std=rounded(math.sqrt(self.m2[j] / self.fin[j])) if has else None,
            ))
        samples = self.samples
        self.reset()
        return out, samples


def _f32_bound(edges: Array, *, up: bool) -> list[np.float32]:
    """Per edge, the least float32 ≥ it (``up``) or the greatest float32 ≤ it."""
    with np.errstate(over="ignore"):
        b = edges.astype(np.float32)
    wrong = b.astype(np.float64) < edges if up else b.astype(np.float64) > edges
    b[wrong] = np.nextafter(b[wrong], np.float32(np.inf if up else -np.inf))
    return list(b)

