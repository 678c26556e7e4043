"""The answer to one prediction request, and its JSON body (fast for large outputs)."""

from __future__ import annotations

import datetime as _dt
import json
import math

import numpy as np

from device_agent.contract.types import Array, Feeds, JsonDict
from device_agent.runtime.model import top_k as top_k_labels
from device_agent.serve.optional import optional

__all__ = ["ModelId", "Prediction", "tensor_json"]

#: {"name": ..., "version": ...} of the model that answered
ModelId = dict[str, str]


#: optional accelerator for JSON answers; Prediction.to_json falls back to the stdlib
_orjson = optional("orjson")


_second: tuple[int, str] = (0, "")


def iso_ms(ts: float) -> str:
    """``ts`` (Unix seconds) as ISO 8601 UTC to the millisecond, ``2026-12-07T14:01:46.517Z``: the text up to the
    second is formatted once a second (datetime's isoformat took ~1.5 µs of every answer)."""
    global _second
    frac, whole = math.modf(ts)  # as datetime.fromtimestamp: microseconds rounded half to even, then truncated to ms
    us = round(frac * 1e6)
    sec = int(whole) + (us >= 1_000_000)
    rest = (us % 1_000_000) // 1000
    cached = _second
    if cached[0] != sec:
        cached = _second = (sec, _dt.datetime.fromtimestamp(sec, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"))
    return f"{cached[1]}.{rest:03d}Z"


class Prediction:
    """The answer to one request. ``outputs`` are source-layout arrays.

    ``top_k`` (classifiers: per sample, best first, ``{index, label, score}``) is computed on first
    access, so in-process callers that only want the raw outputs don't pay for it.
    """

    __slots__ = ("_k", "_labels", "_scores", "_top", "latency_ms", "model", "outputs", "request_id", "timestamp")

    def __init__(self, outputs: Feeds, model: ModelId, request_id: str, timestamp: float, latency_ms: float, *,
                 scores: Array | None = None, k: int = 0, labels: tuple[str, ...] | None = None) -> None:
        self.outputs = outputs
        self.model = model
        self.request_id = request_id
        self.timestamp = timestamp
        self.latency_ms = latency_ms
        self._scores = scores
        self._k = k
        self._labels = labels
        self._top: list[list[JsonDict]] | None = None

    def to_json(self) -> bytes:
        """The HTTP response body: :meth:`to_dict` as JSON, with the tensors formatted fast.

        With orjson (an agent dependency) the whole body is one C call that writes float32 values
        in their shortest round-trip form (~5x faster than formatting them in Python, for 1000
        logits); without it, or for tensors orjson does not take (0-d, non-contiguous), the
        stdlib path gives the same values (9 significant digits for float32)."""
        if _orjson is not None:
            outputs = self.outputs
            if any(v.dtype.kind == "O" for v in outputs.values()):  # string labels (table pipelines): orjson takes lists of str only
                outputs = {k: v.tolist() if v.dtype.kind == "O" else v for k, v in outputs.items()}
            try:
                body: bytes = _orjson.dumps({"model": self.model, "request_id": self.request_id, "timestamp": self._timestamp(),
                                      "latency_ms": round(self.latency_ms, 4), "outputs": outputs, "top_k": self.top_k},
                                            option=_orjson.OPT_SERIALIZE_NUMPY)
                return body
            except TypeError:
                pass
        return self._to_json_stdlib()

    def _to_json_stdlib(self) -> bytes:
        outputs = ",".join(f"{json.dumps(k)}:{tensor_json(v)}" for k, v in self.outputs.items())
        return (f'{{"model":{json.dumps(self.model)},"request_id":{json.dumps(self.request_id)},'
                f'"timestamp":"{self._timestamp()}","latency_ms":{round(self.latency_ms, 4)!r},'
                f'"outputs":{{{outputs}}},"top_k":{json.dumps(self.top_k)}}}').encode()

    def _timestamp(self) -> str:
        return iso_ms(self.timestamp)

    @property
    def top_k(self) -> list[list[JsonDict]] | None:
        if self._top is None and self._scores is not None and self._k:
            self._top = top_k_labels(self._scores, self._k, self._labels)
        return self._top

    def __repr__(self) -> str:
        return f"Prediction(request_id={self.request_id!r}, outputs={list(self.outputs)}, latency_ms={self.latency_ms:.3f})"

    def to_dict(self) -> JsonDict:
        """JSON-ready form (the HTTP response body)."""
        return {
            "model": self.model,
            "request_id": self.request_id,
            "timestamp": self._timestamp(),
            "latency_ms": round(self.latency_ms, 4),
            "outputs": {k: v.tolist() for k, v in self.outputs.items()},
            "top_k": self.top_k,
        }



def tensor_json(a: Array) -> str:
    """A tensor as JSON nested lists, fast: C-level %-formatting per row instead of ``json.dumps``
    on Python floats (2-3x faster for classifier logits). float32 uses 9 significant digits, which
    round-trips exactly; NaN/inf (not JSON) become null."""
    kind = a.dtype.kind
    if kind == "f" and not np.isfinite(a).all():
        return json.dumps(np.where(np.isfinite(a), a, np.nan).astype(object).tolist(), allow_nan=True).replace("NaN", "null")
    if kind == "f":
        fmt = {2: "%.5g", 4: "%.9g"}.get(a.dtype.itemsize, "%.17g")
    elif kind in "iu":
        fmt = "%d"
    else:
        return json.dumps(a.tolist())
    if a.ndim == 0:
        return str(fmt % a.item())
    if a.size == 0:
        return json.dumps(a.tolist())
    row_fmt = "[" + ",".join([fmt] * a.shape[-1]) + "]"
    rows = [row_fmt % tuple(r) for r in a.reshape(-1, a.shape[-1]).tolist()]
    for n in reversed(a.shape[:-1]):  # regroup rows into the leading axes
        rows = ["[" + ",".join(rows[i:i + n]) + "]" for i in range(0, len(rows), n)]
    return rows[0]
