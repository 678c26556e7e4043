"""One telemetry window: request and error counts, a latency sketch and the tracked input features.

The request path stays cheap: it appends the latency to a list and a copy of the tracked input
values (their bytes) to the current block; whole blocks are binned at once by the
:class:`~device_agent.telemetry.features.FeatureTracker` when a block fills or the window closes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import TypedDict

import numpy as np

from device_agent.contract.protocol import FeatureWindow, LatencySummary
from device_agent.contract.types import Array
from device_agent.telemetry.categories import CategoryTracker
from device_agent.telemetry.features import BLOCK_VALUES, FeatureTracker, Layout, LayoutKey
from device_agent.telemetry.sketch import LatencySketch

__all__ = ["BLOCK_ROWS", "MAX_PENDING_VALUES", "Window", "WindowContent"]

#: samples in a block at most
BLOCK_ROWS = 4096
#: values of requests outside the block's layout pending before the request thread bins them
MAX_PENDING_VALUES = 4 << 20


class WindowContent(TypedDict):
    """A closed window: the fields of a :class:`~device_agent.contract.protocol.TelemetryMessage` it fills."""

    window: dict[str, float]
    requests: int
    errors: dict[str, int]
    latency_ms: LatencySummary | None
    features: list[FeatureWindow]
    samples: int


class _Block:
    """Up to ``cap`` samples' feature values, binned at once when full.

    Per part, the bytes of each request's (samples, columns) values, joined when the block is
    binned: ``x.tobytes()`` and a list append take ~70 ns for a small sample, 2.5x less than
    assigning into a preallocated array (numpy's indexing costs more than copying 256 bytes).
    ``fast`` (one tracked input): a one-sample request is appended without building a layout."""

    __slots__ = ("cap", "chunks", "dtype", "fast", "layout", "name", "one", "rows", "select")

    def __init__(self, layout: Layout, *, single_input: bool) -> None:
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

    def put(self, xs: list[Array], start: int, count: int) -> None:
        """Copy samples ``start:start+count`` of the request."""
        for chunks, part, x in zip(self.chunks, self.layout.parts, xs, strict=True):
            chunks.append(part.gather(x)[start:start + count].tobytes())
        self.rows += count

    def values(self) -> list[Array]:
        """Per part, the (rows, columns) values (read-only: over the joined bytes)."""
        return [np.frombuffer(b"".join(c), p.dtype).reshape(self.rows, p.columns) for c, p in zip(self.chunks, self.layout.parts, strict=True)]


class Window:
    """One telemetry window; thread-safe. ``close()`` returns the window's content and starts the next.

    Request path: :meth:`record` counts the request, appends its latency to a list and, given the
    inputs, a copy of their tracked values to the current block (``x.tobytes()`` in the common
    case), all under one lock. A full block is binned by the request that filled it, outside the
    request lock; a partial block when the window closes. Block boundaries depend on the samples
    alone, so a window's summaries are the same however its requests were batched.
    """

    def __init__(self, tracker: FeatureTracker | None = None, *, clock: Callable[[], float] = time.time,
                 categories: CategoryTracker | None = None) -> None:
        self.tracker = tracker
        self.categories = categories  # a table's string columns: counted on the request path (a few values a row)
        self.clock = clock
        self._lock = threading.Lock()  # the request path: counters, latencies, the block
        self._drain_lock = threading.Lock()  # the binning: tracker state, one thread at a time
        self._block: _Block | None = None  # where requests of the block's layout go
        self._full: list[_Block] = []
        # requests of another layout (symbolic dims, absent inputs): gathered per request, binned in drain
        self._odd: list[tuple[Layout, list[Array], int]] = []
        self._odd_values = 0
        self.latency = LatencySketch()
        self.start = clock()
        self.requests = 0
        self.errors: dict[str, int] = {}

    def record(self, latency_s: float | None, *, error: str | None = None, inputs: Mapping[str, Array] | None = None) -> None:
        """Count a request: its latency (None when it failed), its error kind, and — when ``inputs``
        are given — their tracked features (as :meth:`observe`, in the same critical section)."""
        with self._lock:
            self.requests += 1
            if latency_s is not None:
                # one at a time (~0.3 µs): folding 1,024 at once, vectorised, took 0.26 ms after an inference had
                # cooled the caches, a stall on every thousandth request that wrk's p99 at one connection counts
                self.latency.add(latency_s)
            if error:
                self.errors[error] = self.errors.get(error, 0) + 1
            if inputs is None:
                return
            if self.categories is not None:
                self.categories.add(inputs)
            block = self._block
            if block is not None and block.fast:  # the hot path: one sample of the block's shape
                x = inputs.get(block.name)
                if x is not None and x.shape == block.one and x.dtype is block.dtype and block.rows + 1 < block.cap:
                    block.chunks[0].append(x.tobytes() if block.select is None else x.reshape(-1)[block.select].tobytes())
                    block.rows += 1
                    return
        self._observe(inputs)

    def observe(self, arrays: Mapping[str, Array]) -> None:
        """Copy the tracked features of validated inputs (source layout, sample axis first) for
        this window's summaries. The values are copied (the caller may reuse its arrays);
        untracked inputs are ignored."""
        self._observe(arrays)

    def _observe(self, arrays: Mapping[str, Array]) -> None:
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

    def _new_block(self, layout: Layout) -> _Block:
        return _Block(layout, single_input=self.tracker is not None and self.tracker.single_input)

    def drain(self) -> None:
        """Bin the full blocks and the odd requests waiting (the current block keeps filling)."""
        if self.tracker is None:
            return
        with self._drain_lock:
            with self._lock:
                full, self._full = self._full, []
                odd, self._odd, self._odd_values = self._odd, [], 0
            self._bin(self.tracker, full, odd)

    @staticmethod
    def _bin(tracker: FeatureTracker, blocks: list[_Block], odd: list[tuple[Layout, list[Array], int]]) -> None:
        for b in blocks:
            tracker.add_block(b.layout, b.values(), b.rows)
        groups: dict[LayoutKey, list[tuple[Layout, list[Array], int]]] = {}
        for item in odd:
            groups.setdefault(item[0].key, []).append(item)
        for items in groups.values():
            values = [np.concatenate([it[1][p] for it in items]) for p in range(len(items[0][0].parts))]
            tracker.add_block(items[0][0], values, sum(it[2] for it in items))

    def close(self) -> WindowContent:
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
                start, requests, errors, latency = self.start, self.requests, dict(self.errors), self.latency.summary(scale=1000.0)
                categorical = self.categories.take() if self.categories is not None else None
                self.start = end
                self.requests = 0
                self.errors = {}
                self.latency.reset()
            features: list[FeatureWindow] = []
            samples = 0
            if self.tracker is not None:
                self._bin(self.tracker, full, odd)
                features, samples = self.tracker.take()
            if categorical is not None:
                features, samples = features + categorical[0], max(samples, categorical[1])
        return {"window": {"start": round(start, 3), "end": round(end, 3)}, "requests": requests, "errors": errors,
                "latency_ms": latency, "features": features, "samples": samples}
