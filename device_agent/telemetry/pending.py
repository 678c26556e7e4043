"""Classifier predictions on their way to the feedback log, kept off the request path.

A request only appends its request id, model version and a copy of its class scores here; the
records are joined into the :class:`~device_agent.telemetry.feedback.FeedbackLog` in bulk (one
argmax per score width) by the telemetry thread, or by the request that passes a bound.

The copy is the scores' bytes (``scores.tobytes()``): in-process callers own the outputs they get
back and may change them, and a bytes copy costs a request about half of what an ndarray copy does
(no array object, no numpy dispatch) — with a small model's ~40 µs run, every microsecond shows.
"""

from __future__ import annotations

import collections

import numpy as np

from device_agent.contract.types import Array

__all__ = ["FEEDBACK_PENDING_BYTES", "FEEDBACK_PENDING_MAX", "PendingFeedback"]

#: pending records are due to be joined into the log once there are more than this many, or this many bytes of scores.
#: Joining costs ~1.2-1.4 µs a record whatever the batch (measured from 16 to 1,024), so small batches cost no more in
#: all and hold a request up less: 32 take ~40 µs (~80 µs with cold caches after a model run), where 1,024 stalled
#: the request that passed the bound (and every connection waiting behind it) for ~1.5-2.5 ms. wrk counts such a
#: stall many times over at one connection (its latency histogram adds the requests a steady client would have sent
#: meanwhile): that single stall was its p99 of ~2 ms on the digits model.
FEEDBACK_PENDING_MAX = 32
FEEDBACK_PENDING_BYTES = 4 << 20

_Record = tuple[str, str, bytes, np.dtype, tuple[int, ...]]


class PendingFeedback:
    """Records of (request id, version, scores) waiting for the feedback log. Thread-safe (deque appends and pops)."""

    __slots__ = ("_bytes", "_records")

    def __init__(self) -> None:
        self._records: collections.deque[_Record] = collections.deque()
        self._bytes = 0  # approximate (updated without a lock): it only decides when to flush early

    def __len__(self) -> int:
        return len(self._records)

    def add(self, request_id: str, version: str, scores: Array) -> bool:
        """Keep a copy of ``scores``; True when the records are due to be joined (see :meth:`take`)."""
        self._records.append((request_id, version, scores.tobytes(), scores.dtype, scores.shape))
        self._bytes += scores.nbytes
        return len(self._records) > FEEDBACK_PENDING_MAX or self._bytes > FEEDBACK_PENDING_BYTES

    def take_top1(self) -> list[tuple[str, str, tuple[int, ...]]]:
        """Every record so far, oldest first, with the top-1 class of each row of its scores (what the feedback log keeps).

        One argmax over each group's joined buffer: no array object per record (an array per record handed to
        ``FeedbackLog.record_many`` cost ~1.7 µs a record, this and ``record_top1`` about half)."""
        records, groups = self._drain()
        out: list[tuple[str, str, tuple[int, ...]]] = [("", "", ())] * len(records)
        for (dtype, shape), idx in groups.items():
            width = shape[-1] if shape else 1
            rows = 1
            for d in shape[:-1]:
                rows *= d
            if not width or not rows:
                tops: list[tuple[int, ...]] = [()] * len(idx)
            else:
                joined = np.frombuffer(b"".join([records[i][2] for i in idx]), dtype).reshape(len(idx) * rows, width)
                best = joined.argmax(axis=1).tolist()
                tops = [(t,) for t in best] if rows == 1 else [tuple(best[k:k + rows]) for k in range(0, len(best), rows)]
            for i, top in zip(idx, tops, strict=True):
                out[i] = (records[i][0], records[i][1], top)
        return out

    def _drain(self) -> tuple[list[_Record], dict[tuple[np.dtype, tuple[int, ...]], list[int]]]:
        """The records so far and their indexes by (dtype, shape) (usually one group: one buffer for all)."""
        self._bytes = 0
        records: list[_Record] = []
        pending = self._records
        while pending:
            try:
                records.append(pending.popleft())
            except IndexError:  # another thread took the last one
                break
        groups: dict[tuple[np.dtype, tuple[int, ...]], list[int]] = {}
        for i, r in enumerate(records):
            groups.setdefault((r[3], r[4]), []).append(i)
        return records, groups
