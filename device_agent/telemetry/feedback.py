"""Delayed ground truth: join labels that arrive later with the predictions the agent made.

The agent records the top-1 class of every classifier prediction in a bounded log keyed by the
request id it answered with. When the truth is known (a user corrected it, a downstream system
confirmed it), the application posts it::

    POST /v1/feedback  {"request_id": "4f1c…-2a", "label": 3}
    POST /v1/feedback  {"request_id": "4f1c…-2b", "label": ["cat", "dog"]}        # a batch of 2 rows
    POST /v1/feedback  {"request_id": "4f1c…-2b", "index": 1, "label": "dog"}     # one row of it
    POST /v1/feedback  {"items": [{"request_id": …, "label": …}, …]}              # many at once

A label is a class index (int) or a class name from the manifest's labels. Each joined row counts
as labelled (and correct or not) for the model *version that made the prediction*: ground truth
that arrives after an update still judges the old model. The windowed counts go out with the next
telemetry message (:class:`device_agent.contract.protocol.FeedbackWindow`); the fleet compares the accuracy
with the manifest's and alerts when it falls.

Feedback that cannot be used is counted by reason and answered, never raised past the API:
``unknown_id`` (never predicted, or already left the log), ``duplicate`` (that row was labelled
before; the first label stands), ``bad_label`` (wrong type, out of range, unknown class name, wrong
number of rows), ``malformed`` (not an object, no request id).

Memory is bounded in rows and in bytes: at most ``max_rows`` predicted rows and ``max_bytes`` of
log (each prediction is charged :data:`ENTRY_BYTES` plus its request id and :data:`ROW_BYTES` per
row beyond the first, and :data:`LABELLED_BYTES` once a label joined it: an upper bound of what it takes
in the process, checked by tests with tracemalloc) are kept, oldest dropped first, and none longer than ``retention_s``. With the default
8 MB that is ~30,000 one-row predictions with the agent's own request ids. A dropped prediction
that was never fully labelled counts as ``expired``.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np

from device_agent.contract.protocol import FeedbackWindow
from device_agent.contract.types import Array, JsonDict

__all__ = ["REASONS", "FeedbackLog", "FeedbackResult"]

ACCEPTED = "accepted"
REASONS = ("unknown_id", "duplicate", "bad_label", "malformed")
MAX_REQUEST_ID = 128
#: feedback items per batch request
MAX_ITEMS = 10_000
#: what one logged prediction costs at most beyond its request id's characters: its dict slot, its
#: place in the age order, the entry object, its timestamp, its top-1 class (measured: 190-215 bytes
#: on CPython 3.11 depending on where the dict is in its growth; tests/agent/test_telemetry.py checks it)
ENTRY_BYTES = 240
#: each row of a batched prediction beyond the first (a tuple slot and an int)
ROW_BYTES = 40


@dataclass(frozen=True)
class FeedbackResult:
    """What happened to one feedback item: ``outcome`` is "accepted" or one of :data:`REASONS`."""

    outcome: str
    request_id: str | None
    message: str
    rows: int = 0  # rows joined
    correct: int = 0

    @property
    def accepted(self) -> bool:
        return self.outcome == ACCEPTED

    def to_dict(self) -> JsonDict:
        d: JsonDict = {"outcome": self.outcome, "request_id": self.request_id, "message": self.message}
        if self.accepted:
            d.update(rows=self.rows, correct=self.correct)
        return d


#: one logged prediction: (request id, model version, when, top-1 class: an int for one row, else a tuple per row).
#: A tuple of strings and numbers, which CPython's garbage collector stops tracking once it has looked at it. As objects
#: with slots, a full log's ~32,000 entries were half of what a busy digits agent's full collections walked (64,000
#: objects, 12-13 ms a collection in-process; 31-34 ms pauses were seen in the server); as tuples they leave at
#: their first pass (31,500 tracked, 7-8 ms).
_Entry = tuple[str, str, float, "int | tuple[int, ...]"]
_RID: Final = 0
_VERSION: Final = 1
_TOP: Final = 3
#: what marking a prediction labelled costs: its slot in the dict of labelled rows (see FeedbackLog.submit)
LABELLED_BYTES = 136


def _rows_of(entry: _Entry) -> int:
    p = entry[_TOP]
    return 1 if isinstance(p, int) else len(p)


def _top_of(entry: _Entry, row: int) -> int:
    p = entry[_TOP]
    return p if isinstance(p, int) else p[row]


def _top1(items: list[tuple[str, str, Array]]) -> list[tuple[int, ...]]:
    """The top-1 class of every row of every item's scores, one argmax per score width."""
    flat = []
    for _, _, scores in items:
        r = scores if type(scores) is np.ndarray else np.asarray(scores)
        if r.ndim != 2:  # [C] is one row; [..., C] rows of C
            r = r.reshape(1, -1) if r.ndim <= 1 else r.reshape(-1, r.shape[-1])
        flat.append(r)
    out: list[tuple[int, ...]] = [()] * len(items)
    by_width: dict[int, list[int]] = {}
    for i, f in enumerate(flat):
        if f.shape[1]:
            by_width.setdefault(f.shape[1], []).append(i)
    for idx in by_width.values():
        parts = [flat[i] for i in idx]
        tops = np.concatenate(parts).argmax(axis=1).tolist()
        if len(tops) == len(idx):  # one row each: the usual single-sample request
            for i, t in zip(idx, tops, strict=True):
                out[i] = (t,)
            continue
        start = 0
        for i, part in zip(idx, parts, strict=True):
            out[i] = tuple(tops[start:start + part.shape[0]])
            start += part.shape[0]
    return out


class FeedbackLog:
    """Bounded log of top-1 predictions and the running join with late labels. Thread-safe.

    Args:
        labels: class names from the manifest (labels may then be given by name).
        classes: number of classes (int labels must be in ``[0, classes)``); None: from ``labels``,
            else any non-negative int.
        max_rows: predicted rows kept (a batch of 8 takes 8); the oldest predictions go first.
        max_bytes: memory the log may take (see the module's docstring for what one prediction is charged).
        retention_s: predictions older than this can no longer be labelled.
        clock: time source (tests).
    """

    def __init__(self, *, labels: tuple[str, ...] | None = None, classes: int | None = None, max_rows: int = 100_000,
                 max_bytes: int = 8 << 20, retention_s: float = 86_400.0, clock: Callable[[], float] = time.time) -> None:
        if max_rows < 1 or retention_s <= 0 or max_bytes < 1024:
            raise ValueError(f"max_rows must be ≥ 1, max_bytes ≥ 1024 and retention_s > 0, got {max_rows}, {max_bytes} and {retention_s}")
        self.labels = tuple(labels) if labels else None
        self.classes = classes if classes is not None else (len(self.labels) if self.labels else None)
        self._by_name = {name: i for i, name in enumerate(self.labels or ())}
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.retention_s = retention_s
        self.clock = clock
        # a plain dict for the lookups and a deque for the age order: ~40 bytes a prediction less than an OrderedDict
        self._log: dict[str, _Entry] = {}
        self._order: collections.deque[_Entry] = collections.deque()
        # rows already labelled, as a bitmask per request id: only for predictions that got feedback (a mutable mark
        # inside the entry would make every entry an object the garbage collector walks)
        self._labelled: dict[str, int] = {}
        self._rows = 0
        self._bytes = 0
        self._lock = threading.Lock()
        self._reset_window()
        self.totals: dict[str, int] = {ACCEPTED: 0, "labelled": 0, "correct": 0, "expired": 0, **dict.fromkeys(REASONS, 0)}
        self._cumulative: dict[str, list[int]] = {}

    def _reset_window(self) -> None:
        self._accuracy: dict[str, list[int]] = {}
        self._rejected: dict[str, int] = {}
        self._expired = 0

    # --- predictions -----------------------------------------------------------------------------

    def record(self, request_id: str, version: str, scores: Array) -> None:
        """Remember the top-1 class of each row of ``scores`` ([N, C] or [C]) under ``request_id``."""
        self.record_many([(request_id, version, scores)])

    def record_many(self, items: list[tuple[str, str, Array]]) -> None:
        """:meth:`record` for many predictions at once: one argmax over all rows of a width, one lock.

        The agent hands over the predictions of a whole interval here; per prediction this costs a
        dictionary insert, where one ``record`` call costs a few microseconds of numpy call overhead.
        """
        self.record_top1([(request_id, version, rows) for (request_id, version, _), rows in zip(items, _top1(items), strict=True)])

    def record_top1(self, items: list[tuple[str, str, tuple[int, ...]]]) -> None:
        """Remember predictions whose top-1 class per row is already known (``PendingFeedback.take_top1``)."""
        now = self.clock()
        base = ENTRY_BYTES - ROW_BYTES  # a prediction's charge: base + its id + ROW_BYTES a row
        max_rows, max_bytes, log, order = self.max_rows, self.max_bytes, self._log, self._order
        with self._lock:
            for request_id, version, rows in items:
                n = len(rows)
                cost = base + len(request_id) + ROW_BYTES * n
                if not n or n > max_rows or cost > max_bytes:
                    continue
                # a caller that reuses its request id replaces the older prediction (the newer is the one to judge);
                # the old entry stays in the age order (its bytes still counted) until it reaches the front
                old = log.get(request_id)
                if old is not None:
                    self._rows -= _rows_of(old)
                    if self._labelled.pop(request_id, None) is not None:  # the new prediction starts unlabelled
                        self._bytes -= LABELLED_BYTES
                entry = log[request_id] = (request_id, version, now, rows[0] if n == 1 else rows)
                order.append(entry)
                self._rows += n
                self._bytes += cost
            self._evict(now)

    def _evict(self, now: float) -> None:
        # runs for every prediction once the log is full (one in, one out): locals, the charge spelled out as in record_top1
        horizon = now - self.retention_s
        order, log, max_rows, max_bytes = self._order, self._log, self.max_rows, self.max_bytes
        n_rows, n_bytes, expired, base, labelled = self._rows, self._bytes, 0, ENTRY_BYTES - ROW_BYTES, self._labelled
        while order:
            e = order[0]
            rid = e[0]
            live = log.get(rid) is e
            if live and n_rows <= max_rows and n_bytes <= max_bytes and e[2] >= horizon:
                break
            order.popleft()
            p = e[3]
            rows = 1 if isinstance(p, int) else len(p)
            n_bytes -= base + len(rid) + ROW_BYTES * rows
            if not live:  # replaced by a newer prediction under the same id: its rows were handed over then
                continue
            n_rows -= rows
            del log[rid]
            marks = labelled.pop(rid, None)
            if marks is not None:
                n_bytes -= LABELLED_BYTES
            if marks != (1 << rows) - 1:
                expired += 1
        self._rows, self._bytes = n_rows, n_bytes
        if expired:
            self._expired += expired
            self.totals["expired"] += expired

    @property
    def size(self) -> int:
        """Predicted rows held."""
        return self._rows

    @property
    def size_bytes(self) -> int:
        """Bytes the log is charged for (an upper bound of what it takes; at most ``max_bytes``)."""
        return self._bytes

    # --- feedback ----------------------------------------------------------------------------------

    def submit(self, item: object) -> FeedbackResult:
        """Join one feedback item ``{"request_id", "label", "index"?}``; never raises on bad input."""
        rid = item.get("request_id") if isinstance(item, Mapping) else None
        if not isinstance(item, Mapping):
            return self._reject("malformed", None, f"a feedback item must be an object {{request_id, label}}, got {type(item).__name__}")
        if not isinstance(rid, str) or not rid or len(rid) > MAX_REQUEST_ID:
            return self._reject("malformed", None, f"request_id must be a non-empty string of at most {MAX_REQUEST_ID} characters, got {rid!r}")
        unknown = set(item) - {"request_id", "label", "index"}
        if unknown:
            return self._reject("malformed", rid, f"unknown key(s) {', '.join(sorted(map(str, unknown)))}; allowed: request_id, label, index")
        if "label" not in item:
            return self._reject("malformed", rid, "the item has no label")
        index = item.get("index")
        if index is not None and (not isinstance(index, int) or isinstance(index, bool) or index < 0):
            return self._reject("bad_label", rid, f"index must be a non-negative integer (a row of the request's batch), got {index!r}")
        now = self.clock()
        with self._lock:
            self._evict(now)
            entry = self._log.get(rid)
            if entry is None:
                return self._reject("unknown_id", rid, f"no prediction with request_id {rid!r}: never made here, or older than the "
                                    f"retention ({self.retention_s:g} s, {self.max_rows} rows, {self.max_bytes:,} bytes)", locked=True)
            n = _rows_of(entry)
            if index is not None:
                if index >= n:
                    return self._reject("bad_label", rid, f"index {index} is outside the request's batch of {n} row(s)", locked=True)
                rows, labels = [index], [item["label"]]
            elif isinstance(item["label"], list):
                if len(item["label"]) != n:
                    return self._reject("bad_label", rid, f"{len(item['label'])} labels for a request of {n} row(s); "
                                        "give one per row, or one with \"index\"", locked=True)
                rows, labels = list(range(n)), item["label"]
            elif n == 1:
                rows, labels = [0], [item["label"]]
            else:
                return self._reject("bad_label", rid, f"the request had {n} rows: give a list of {n} labels, or one label with \"index\"",
                                    locked=True)
            classes = []
            for label in labels:
                cls, problem = self._class_of(label)
                if problem:
                    return self._reject("bad_label", rid, problem, locked=True)
                classes.append(cls)
            marks = self._labelled.get(rid)
            if marks is not None and any(marks >> r & 1 for r in rows):
                return self._reject("duplicate", rid, f"request {rid!r} was labelled before; the first label stands", locked=True)
            correct = self._join(entry, marks, rows, classes, now)
        return FeedbackResult(ACCEPTED, rid, f"joined {len(rows)} row(s) with the prediction of model version {entry[_VERSION]}",
                              rows=len(rows), correct=correct)

    def _join(self, entry: _Entry, marks: int | None, rows: list[int], classes: list[int], now: float) -> int:
        """Mark ``rows`` of ``entry`` labelled with ``classes`` and count them (lock held); returns how many were right."""
        correct = 0
        mask = marks or 0
        for r, cls in zip(rows, classes, strict=True):
            mask |= 1 << r
            correct += int(_top_of(entry, r) == cls)
        self._labelled[entry[_RID]] = mask
        if marks is None:  # the mark is held as long as the prediction: within max_bytes, the oldest predictions make room
            self._bytes += LABELLED_BYTES
            self._evict(now)
        for table in (self._accuracy, self._cumulative):
            acc = table.setdefault(entry[_VERSION], [0, 0])
            acc[0] += len(rows)
            acc[1] += correct
        self.totals[ACCEPTED] += 1
        self.totals["labelled"] += len(rows)
        self.totals["correct"] += correct
        return correct

    def submit_many(self, items: Iterable[object]) -> list[FeedbackResult]:
        return [self.submit(item) for item in items]

    def reject_request(self, message: str) -> FeedbackResult:
        """Count a request body that was not feedback at all (e.g. invalid JSON)."""
        return self._reject("malformed", None, message)

    def _class_of(self, label: object) -> tuple[int, str | None]:
        if isinstance(label, bool) or not isinstance(label, (int, str)):
            kind = "a class index (integer)" + (" or a class name" if self.labels else "")
            return -1, f"label must be {kind}, got {type(label).__name__} {label!r}"
        if isinstance(label, str):
            if label in self._by_name:
                return self._by_name[label], None
            if not self.labels:
                return -1, f"label {label!r} is a name, but this model has no class names; use the class index"
            shown = ", ".join(self.labels[:10]) + (", …" if len(self.labels) > 10 else "")
            return -1, f"label {label!r} is not a class of this model; classes: {shown}"
        if label < 0 or (self.classes is not None and label >= self.classes):
            limit = f"0..{self.classes - 1}" if self.classes is not None else "≥ 0"
            return -1, f"label {label} is out of range; class indices are {limit}"
        return label, None

    def _reject(self, reason: str, rid: str | None, message: str, *, locked: bool = False) -> FeedbackResult:
        if locked:
            self._count(reason)
        else:
            with self._lock:
                self._count(reason)
        return FeedbackResult(reason, rid, message)

    def _count(self, reason: str) -> None:
        self._rejected[reason] = self._rejected.get(reason, 0) + 1
        self.totals[reason] += 1

    def accuracy(self, version: str) -> tuple[int, int]:
        """(labelled rows, correct rows) joined so far for predictions of ``version`` (e.g. for probation)."""
        with self._lock:
            labelled, correct = self._cumulative.get(version, (0, 0))
        return labelled, correct

    # --- telemetry ---------------------------------------------------------------------------------

    def take(self) -> FeedbackWindow | None:
        """This window's joins and rejections (None when nothing happened); starts the next window."""
        with self._lock:
            self._evict(self.clock())
            if not self._accuracy and not self._rejected and not self._expired:
                return None
            out = FeedbackWindow(accuracy={v: {"labelled": a[0], "correct": a[1]} for v, a in self._accuracy.items()},
                                 rejected=dict(self._rejected), expired=self._expired)
            self._reset_window()
        return out
