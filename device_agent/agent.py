"""The agent: one loaded model, its validator, telemetry, the outbox, the MQTT link and the HTTP API.

Embedding (no MQTT, no HTTP)::

    from device_agent.agent import Agent

    with Agent.open("out/") as agent:          # loads once, runs the self-test
        p = agent.predict({"x": batch})      # validated; p.outputs, p.top_k, p.request_id

As a daemon, :meth:`Agent.from_config` wires everything from ``agent.toml`` and :meth:`start`
starts the telemetry thread, the MQTT link and the HTTP server (``edgekit-agent run``).
"""

from __future__ import annotations

import collections
import datetime as _dt
import itertools
import json
import logging
import os
import platform
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from device_agent import __version__
from device_agent.config import AgentConfig
from device_agent.errors import InvalidInput, NotReady
from device_agent.feedback import FeedbackLog, FeedbackResult
from device_agent.model import LoadedModel, load_model
from device_agent.model import top_k as top_k_labels
from device_agent.outbox import Outbox
from device_agent.protocol import (
    STATE_SEQ_OFFLINE,
    Command,
    CommandKind,
    DeviceStatus,
    JobState,
    JobUpdate,
    StateMessage,
    TelemetryMessage,
    Topics,
    decode,
    encode,
    state_seq,
    valid_id,
)
from device_agent.runtime import BackendError, runtime_versions
from device_agent.telemetry import FeatureTracker, Metrics, Window, select_features
from device_agent.validate import Validator

try:  # optional accelerator for JSON answers; Prediction.to_json falls back to the stdlib
    import orjson as _orjson
except ImportError:  # pragma: no cover - the fallback is tested by switching _orjson off
    _orjson = None

__all__ = ["Agent", "Prediction", "hardware_summary"]

log = logging.getLogger("edgekit.agent")

CommandHandler = Callable[[Command], None]


class Prediction:
    """The answer to one request. ``outputs`` are source-layout arrays.

    ``top_k`` (classifiers: per sample, best first, ``{index, label, score}``) is computed on first
    access, so in-process callers that only want the raw outputs don't pay for it.
    """

    __slots__ = ("_k", "_labels", "_scores", "_top", "latency_ms", "model", "outputs", "request_id", "timestamp")

    def __init__(self, outputs: dict[str, np.ndarray], model: dict[str, Any], request_id: str, timestamp: float, latency_ms: float, *,
                 scores: np.ndarray | None = None, k: int = 0, labels: tuple[str, ...] | None = None) -> None:
        self.outputs = outputs
        self.model = model
        self.request_id = request_id
        self.timestamp = timestamp
        self.latency_ms = latency_ms
        self._scores = scores
        self._k = k
        self._labels = labels
        self._top: list[list[dict[str, Any]]] | None = None

    def to_json(self) -> bytes:
        """The HTTP response body: :meth:`to_dict` as JSON, with the tensors formatted fast.

        With orjson (an agent dependency) the whole body is one C call that writes float32 values
        in their shortest round-trip form (~5x faster than formatting them in Python, for 1000
        logits); without it, or for tensors orjson does not take (0-d, non-contiguous), the
        stdlib path gives the same values (9 significant digits for float32)."""
        if _orjson is not None:
            try:
                return _orjson.dumps({"model": self.model, "request_id": self.request_id, "timestamp": self._timestamp(),
                                      "latency_ms": round(self.latency_ms, 4), "outputs": self.outputs, "top_k": self.top_k},
                                     option=_orjson.OPT_SERIALIZE_NUMPY)
            except TypeError:
                pass
        return self._to_json_stdlib()

    def _to_json_stdlib(self) -> bytes:
        outputs = ",".join(f"{json.dumps(k)}:{tensor_json(v)}" for k, v in self.outputs.items())
        return (f'{{"model":{json.dumps(self.model)},"request_id":{json.dumps(self.request_id)},'
                f'"timestamp":"{self._timestamp()}","latency_ms":{round(self.latency_ms, 4)!r},'
                f'"outputs":{{{outputs}}},"top_k":{json.dumps(self.top_k)}}}').encode()

    def _timestamp(self) -> str:
        return _dt.datetime.fromtimestamp(self.timestamp, _dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    @property
    def top_k(self) -> list[list[dict[str, Any]]] | None:
        if self._top is None and self._scores is not None and self._k:
            self._top = top_k_labels(self._scores, self._k, self._labels)
        return self._top

    def __repr__(self) -> str:
        return f"Prediction(request_id={self.request_id!r}, outputs={list(self.outputs)}, latency_ms={self.latency_ms:.3f})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the HTTP response body)."""
        return {
            "model": self.model,
            "request_id": self.request_id,
            "timestamp": self._timestamp(),
            "latency_ms": round(self.latency_ms, 4),
            "outputs": {k: v.tolist() for k, v in self.outputs.items()},
            "top_k": self.top_k,
        }



def tensor_json(a: np.ndarray) -> str:
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
        return fmt % a.item()
    if a.size == 0:
        return json.dumps(a.tolist())
    row_fmt = "[" + ",".join([fmt] * a.shape[-1]) + "]"
    rows = [row_fmt % tuple(r) for r in a.reshape(-1, a.shape[-1]).tolist()]
    for n in reversed(a.shape[:-1]):  # regroup rows into the leading axes
        rows = ["[" + ",".join(rows[i:i + n]) + "]" for i in range(0, len(rows), n)]
    return rows[0]


class Agent:
    """Serves one model. Thread-safe: ``predict`` may be called from many threads at once."""

    def __init__(self, model: LoadedModel, *, config: AgentConfig | None = None, outbox: Outbox | None = None,
                 telemetry: bool = True, max_batch: int = 256, max_elements: int = 16 << 20, top_k_default: int = 5,
                 max_payload_bytes: int = 16 * 1024, max_values_per_feature: int = 256, clock: Callable[[], float] = time.time,
                 feedback_max_rows: int = 100_000, feedback_retention_s: float = 86_400.0) -> None:
        self.model = model
        self.config = config
        self.outbox = outbox
        self.clock = clock
        self.top_k_default = top_k_default
        self.max_payload_bytes = max_payload_bytes
        self.validator = Validator(model.inputs, max_batch=max_batch, max_elements=max_elements)
        self.metrics = Metrics()
        tracker = None
        self.features_left_out = 0
        if telemetry and model.manifest is not None and model.manifest.features:
            tracked, self.features_left_out = select_features(model.manifest.features, model.inputs, max_payload_bytes)
            tracker = FeatureTracker(tracked, max_values_per_feature=max_values_per_feature)
        self.window = Window(tracker, clock=clock)
        self._tracked_inputs = {f.input for f in tracker.features} if tracker else set()
        self._commands: dict[CommandKind, CommandHandler] = {}
        self._state_conn, self._state_n = -1, 0  # state message order (protocol.state_seq)
        self._model_id = {"name": model.name, "version": model.version}
        self._scores_name = model.outputs[0].name if model.is_classifier and model.outputs else None
        # late ground truth (POST /v1/feedback) is joined with the top-1 of classifier predictions
        self._feedback_pending: collections.deque = collections.deque()
        self.feedback = None
        if self._scores_name is not None:
            width = model.outputs[0].shape[-1] if model.outputs[0].shape else None
            self.feedback = FeedbackLog(labels=model.labels, classes=width if isinstance(width, int) else None,
                                        max_rows=feedback_max_rows, retention_s=feedback_retention_s, clock=clock)
        # request ids: random per start + a counter (unique, and ~50x cheaper than uuid4 per request)
        self._rid_prefix = uuid.uuid4().hex[:12] + "-"
        self._rid = itertools.count(1)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.link = None  # MqttLink when a broker is configured
        self.server = None  # the HTTP server when the API is enabled
        self.updater = None  # device_agent.updater.Updater when over-the-air updates are on (attach_updater)
        self._retired: collections.deque = collections.deque()  # (window, model) of models an update swapped out
        self.boot = outbox.next_boot() if outbox is not None else 0
        self.started_at = clock()
        self._ready_reason = None if model.selftest.passed else f"self-test failed: {model.selftest.detail}"
        self.metrics.info = lambda: {"name": self.model.name, "version": self.model.version, "artifact": self.model.file.name,
                                     "runtime": self.model.backend.runtime}
        self.metrics.gauge("edgekit_agent_ready", "1 when the model is loaded and passed its self-test.", lambda: float(self.ready))
        self.metrics.gauge("edgekit_agent_selftest_passed", "1 when the start-up self-test passed.", lambda: float(self.model.selftest.passed))
        if outbox is not None:
            self.metrics.gauge("edgekit_agent_outbox_depth", "Messages waiting in the outbox.", lambda: outbox.depth)
            self.metrics.gauge("edgekit_agent_outbox_bytes", "Payload bytes waiting in the outbox.", lambda: outbox.size_bytes)
            self.metrics.gauge("edgekit_agent_outbox_dropped_total", "Messages the bounded outbox discarded (oldest first).",
                               lambda: outbox.dropped_total)
        self.metrics.gauge("edgekit_agent_mqtt_connected", "1 while connected to the MQTT broker.",
                           lambda: float(bool(self.link and self.link.connected)))

    # --- construction --------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path, *, prefer: tuple[str, ...] | list[str] = ("ort", "onnx", "tflite"), threads: int = 0,
             artifact: str | None = None, verify: bool = True, selftest: bool = True, **kwargs: Any) -> Agent:
        """An in-process agent for ``path`` (model directory or file): no MQTT, no HTTP."""
        model = load_model(path, prefer=prefer, threads=threads, artifact=artifact, verify=verify, selftest=selftest)
        return cls(model, **kwargs)

    @classmethod
    def from_config(cls, cfg: AgentConfig) -> Agent:
        """Load the model and open the outbox as configured; call :meth:`start` to serve.

        With OTA on (``[ota] enabled`` and a broker), the model comes from the model store: the
        updater recovers from any crash first and names the version to serve."""
        updater, path = None, cfg.model.path
        if cfg.ota.enabled and cfg.broker.enabled:
            from device_agent.updater import updater_from_config

            updater = updater_from_config(cfg)
            path = (updater.boot() if updater is not None else None) or cfg.model.path
        model = load_model(path, prefer=cfg.model.prefer, threads=cfg.model.threads, artifact=cfg.model.artifact or None,
                           verify=cfg.model.verify_files, selftest=cfg.model.selftest)
        outbox = None
        if cfg.broker.enabled:
            o = cfg.outbox
            outbox = Outbox(cfg.outbox_path, max_messages=o.max_messages, max_bytes=o.max_bytes, max_age_s=o.max_age_s, durable=o.durable)
        a = cfg.api
        t = cfg.telemetry
        agent = cls(model, config=cfg, outbox=outbox, telemetry=t.enabled and cfg.broker.enabled, max_batch=a.max_batch,
                    max_elements=a.max_elements, top_k_default=a.top_k, max_payload_bytes=t.max_payload_bytes,
                    max_values_per_feature=t.max_values_per_feature, feedback_max_rows=t.feedback_max_rows,
                    feedback_retention_s=t.feedback_retention_s)
        if updater is not None:
            agent.attach_updater(updater)
        return agent

    # --- serving ---------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready_reason is None

    @property
    def not_ready_reason(self) -> str | None:
        return self._ready_reason

    def predict(self, inputs: Mapping[str, Any], *, top_k: int | None = None, request_id: str | None = None) -> Prediction:
        """Validate ``inputs`` (source layout, names → arrays or nested lists), run the model.

        Args:
            inputs: one entry per model input.
            top_k: labels to return per sample for classifiers (default from config; 0 = none).
            request_id: caller's id for tracing (default: a new UUID).

        Raises:
            InvalidInput: the request does not fit the signature (nothing ran).
            NotReady: the model failed its self-test.
            BackendError: the runtime failed.
        """
        if self._ready_reason is not None:
            self._count_error("not_ready")
            raise NotReady(f"the agent is not ready: {self._ready_reason}")
        try:
            arrays = self.validator.coerce(inputs)
        except InvalidInput as e:
            self._count_error(e.kind)
            raise
        tracked = arrays if self._tracked_inputs else None  # the window ignores untracked inputs
        try:
            self.validator.check_finite(arrays)
        except InvalidInput as e:
            self._count_error(e.kind, inputs=tracked)  # rejected NaN inputs count in the features' "nan" too
            raise
        model = self.model  # one read: a request finishes on the model it started on, even across an OTA swap
        t0 = time.perf_counter()
        try:
            outputs = model.run(arrays)
        except BackendError:
            self._count_error("runtime", inputs=tracked)
            if self.updater is not None:
                self.updater.observe(model, arrays, None, None, "runtime")
            raise
        dt = time.perf_counter() - t0
        if self.updater is not None:
            self.updater.observe(model, arrays, outputs, dt)
        self.window.record(dt, inputs=tracked)  # one lock for the request count, latency and features
        first = next(iter(arrays.values()))
        self.metrics.prediction(dt, int(first.shape[0]) if first.ndim else 1)
        scores = outputs.get(self._scores_name) if self._scores_name else None
        if scores is not None and not (scores.ndim in (1, 2) and scores.dtype.kind == "f"):
            scores = None
        rid = request_id or f"{self._rid_prefix}{next(self._rid):x}"
        mid = self._model_id if self._model_id["version"] == model.version else {"name": model.name, "version": model.version}
        if scores is not None and self._feedback is not None:
            # joined into the feedback log off the request path (see the feedback property); a copy,
            # since in-process callers own the outputs they get back
            self._feedback_pending.append((rid, mid["version"], scores.copy()))
            if len(self._feedback_pending) > 1024:
                self._flush_feedback()
        return Prediction(outputs, mid, rid, self.clock(), dt * 1000.0,
                          scores=scores, k=self.top_k_default if top_k is None else top_k, labels=model.labels)

    @property
    def feedback(self) -> FeedbackLog | None:
        """The log of classifier predictions awaiting ground truth (pending records joined first)."""
        self._flush_feedback()
        return self._feedback

    @feedback.setter
    def feedback(self, log_: FeedbackLog | None) -> None:
        self._feedback = log_

    def _flush_feedback(self) -> None:
        pending, fb = self._feedback_pending, self._feedback
        items = []
        while pending:
            try:
                items.append(pending.popleft())
            except IndexError:  # another thread took the last one
                break
        if items and fb is not None:
            fb.record_many(items)

    def submit_feedback(self, items: list[Any]) -> list[FeedbackResult]:
        """Join late ground truth with earlier predictions (see :mod:`device_agent.feedback`); never raises on bad items."""
        if self.feedback is None:
            return [FeedbackResult("bad_label", item.get("request_id") if isinstance(item, dict) else None,
                                   "this model is not a classifier: feedback labels cannot be joined") for item in items]
        return self.feedback.submit_many(items)

    def _count_error(self, kind: str, *, inputs: Mapping[str, np.ndarray] | None = None) -> None:
        self.window.record(None, error=kind, inputs=inputs)
        self.metrics.error(kind)

    # --- information -------------------------------------------------------------------------------

    def model_info(self) -> dict[str, Any]:
        """``GET /v1/model``: identity, signature (source layout), artifact, self-test, tracked features."""
        m = self.model
        info: dict[str, Any] = {
            **m.summary(),
            "task": m.task,
            "labels": list(m.labels) if m.labels else None,
            "inputs": [s.to_dict() for s in m.inputs],
            "outputs": [s.to_dict() for s in m.outputs],
            "selftest": m.selftest.to_dict(),
            "load_seconds": round(m.load_seconds, 4),
            "created_at": m.manifest.created_at if m.manifest else None,
            "metrics": m.manifest.metrics.get(m.file.name) if m.manifest else None,
            "tracked_features": [f.name for f in self.window.tracker.features] if self.window.tracker else [],
            "limits": {"max_batch": self.validator.max_batch, "max_elements": self.validator.max_elements},
        }
        return info

    def health(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ready": self.ready, "reason": self._ready_reason, "uptime_s": round(self.clock() - self.started_at, 3),
                               "model": self.model.summary(), "agent_version": __version__}
        if self.outbox is not None:
            out["outbox"] = {"depth": self.outbox.depth, "bytes": self.outbox.size_bytes, "dropped_total": self.outbox.dropped_total}
        if self.link is not None:
            out["mqtt"] = {"connected": self.link.connected, "last_error": self.link.last_error}
        if self.updater is not None:
            out["ota"] = self.updater.status()
        return out

    # --- daemon --------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the telemetry thread, the MQTT link and the HTTP API (as configured)."""
        cfg = self.config
        if cfg is not None and cfg.broker.enabled and self.outbox is not None:
            from device_agent.mqtt import MqttLink

            self.topics = Topics(cfg.device.id, cfg.device.group, cfg.broker.topic_prefix)
            password = cfg.broker.password_file.read_text().strip() if cfg.broker.password_file else None
            self.link = MqttLink(cfg.broker, self.topics, self.outbox, birth=self._birth_payload,
                                 will=self._will_payload, on_message=self._on_message,
                                 password=password)
            if cfg.telemetry.enabled:
                self._spawn(self._telemetry_loop, "edgekit-telemetry")
            if self.updater is not None:
                self.updater.attach(get_model=lambda: self.model, swap=self.swap_model, report=self._report_ota, transport=self.link,
                                    chunk_filter=self.topics.ota_chunks)
            self.link.start()
            if self.updater is not None:
                self.updater.start()
        if cfg is not None and cfg.api.enabled:
            from device_agent.server import serve

            self.server = serve(self, cfg.api.host, cfg.api.port, max_body_bytes=cfg.api.max_body_bytes, max_connections=cfg.api.max_connections)

    def stop(self) -> None:
        """Stop serving; publish the window in progress, the "offline" state; close the outbox."""
        self._stop.set()
        if self.updater is not None:
            self.updater.stop()  # marks a clean shutdown: a restart on probation is not counted as a crash
        if self.server is not None:
            self.server.close()
            self.server = None
        for t in self._threads:
            t.join(5)
        self._threads = []
        if self.link is not None and self.config is not None and self.config.telemetry.enabled:
            while self._retired:
                window, model = self._retired.popleft()
                self.publish_telemetry(window=window, model=model)
            self.publish_telemetry()  # the partial window is queued, not lost
        if self.link is not None:
            deadline = time.monotonic() + 2.0  # a short grace to deliver what is queued; the rest stays on disk
            while self.link.connected and self.outbox is not None and self.outbox.depth and time.monotonic() < deadline:
                time.sleep(0.02)
            self.link.stop()
        if self.outbox is not None:
            self.outbox.close()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until :meth:`stop` (or ``timeout``); True when stopped."""
        return self._stop.wait(timeout)

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _telemetry_loop(self) -> None:
        interval = self.config.telemetry.interval_s  # type: ignore[union-attr]
        next_end = time.monotonic() + interval
        while not self._stop.is_set():
            self._stop.wait(min(0.5, max(0.0, next_end - time.monotonic())))
            if self._stop.is_set():
                break
            try:
                while self._retired:  # windows of models swapped out by an update
                    window, model = self._retired.popleft()
                    self.publish_telemetry(window=window, model=model)
                self.window.drain()
                self._flush_feedback()
                if time.monotonic() >= next_end:
                    next_end += interval
                    if next_end < time.monotonic():  # we fell behind (suspend, clock jump): don't burst
                        next_end = time.monotonic() + interval
                    self.publish_telemetry()
            except Exception:
                log.exception("telemetry: closing the window failed; will retry next window")

    # --- messages ------------------------------------------------------------------------------------

    def publish_telemetry(self, *, window: Window | None = None, model: LoadedModel | None = None) -> int | None:
        """Close the current window (or a retired ``window`` of ``model``) and queue its telemetry
        message; returns its ``seq``."""
        window = window or self.window
        model = model or self.model
        if self.outbox is None or self.config is None:
            window.close()
            return None
        content = window.close()
        feedback = self.feedback.take() if self.feedback is not None else None
        topics = Topics(self.config.device.id, self.config.device.group, self.config.broker.topic_prefix)
        depth = self.outbox.depth

        def build(seq: int, dropped: int) -> bytes:
            features = list(content["features"])
            left_out = self.features_left_out
            while True:
                msg = TelemetryMessage(device=topics.device, seq=seq, boot=self.boot, ts=round(self.clock(), 3),
                                       model={"name": model.name, "version": model.version}, features=features,
                                       features_dropped=left_out, dropped=dropped, feedback=feedback, outbox=depth,
                                       **{k: v for k, v in content.items() if k != "features"})
                payload = encode(msg)
                if len(payload) <= self.max_payload_bytes or not features:
                    return payload
                # over budget (long feature names, many bins): the profile's last features go first
                cut = max(1, len(features) // 8)
                features = features[:-cut]
                left_out += cut

        return self.outbox.append(topics.telemetry, build)

    def report_job(self, job: str, state: JobState, detail: str = "", *, reason: str = "", ota_state: str = "",
                   model: dict[str, Any] | None = None) -> int | None:
        """Queue a job state change (used by command handlers, e.g. OTA). Retained per job topic, so
        ``edgekit fleet jobs`` sees the latest state of every job without a fleet-side daemon."""
        if self.outbox is None or self.config is None:
            return None
        topics = Topics(self.config.device.id, self.config.device.group, self.config.broker.topic_prefix)
        model = model or {"name": self.model.name, "version": self.model.version}
        return self.outbox.append(topics.job(job), lambda seq, dropped: encode(JobUpdate(
            device=topics.device, seq=seq, boot=self.boot, ts=round(self.clock(), 3), job=job, state=state, detail=detail,
            model=model, dropped=dropped, reason=reason, ota_state=ota_state)), retain=True)

    def _report_ota(self, r: Any) -> None:
        self.report_job(r.job, r.state, r.detail, reason=r.reason, ota_state=r.ota_state, model=r.model)
        if self.link is not None:
            self.link.publish_state()  # the served version may have changed: refresh the retained state

    def attach_updater(self, updater: Any) -> None:
        """Take update commands (deploy, rollback, cancel) with ``updater`` (from_config does this)."""
        self.updater = updater
        for kind in (CommandKind.DEPLOY, CommandKind.ROLLBACK, CommandKind.CANCEL):
            self.register_command(kind, updater.handle)

    def swap_model(self, new: LoadedModel) -> LoadedModel:
        """Serve ``new`` from the next request on (one reference store); requests already running
        finish on the old model. Returns the old model (the OTA updater keeps it for a fast rollback)."""
        old = self.model
        if tuple(new.inputs) != tuple(old.inputs):  # an update allowed to change the signature
            self.validator = Validator(new.inputs, max_batch=self.validator.max_batch, max_elements=self.validator.max_elements)
        if self.link is not None and self.config is not None and self.config.telemetry.enabled:
            # A telemetry window never mixes two versions: the old model's window is retired here (O(1)) and
            # published by the telemetry thread, so the swap itself does no encoding or disk I/O.
            tracker = self.window.tracker
            if tracker is not None:
                features = tracker.features
                if new.manifest is not None and new.manifest.features \
                        and tuple(new.manifest.features) != tuple(old.manifest.features if old.manifest else ()):
                    features, self.features_left_out = select_features(new.manifest.features, new.inputs, self.max_payload_bytes)
                tracker = FeatureTracker(features, max_values_per_feature=tracker.max_values)  # the new model's reference profile
            self._retired.append((self.window, old))
            self.window = Window(tracker, clock=self.clock)
            self._tracked_inputs = {f.input for f in tracker.features} if tracker else set()
        self._model_id = {"name": new.name, "version": new.version}
        self.model = new
        self._ready_reason = None if new.selftest.passed else f"self-test failed: {new.selftest.detail}"
        log.info("serving %s %s (was %s)", new.name, new.version, old.version)
        return old

    def _birth_payload(self) -> bytes:
        conn = self.link.connects if self.link is not None else 0
        if conn != self._state_conn:
            self._state_conn, self._state_n = conn, 0
        self._state_n += 1
        return encode(self.state_message(DeviceStatus.ONLINE, seq=state_seq(conn, self._state_n)))

    def _will_payload(self, reason: str) -> bytes:
        # the Last Will is registered before connecting: it belongs to the connection about to be made
        conn = (self.link.connects if self.link is not None else 0) + (1 if reason == "lwt" else 0)
        return encode(self.state_message(DeviceStatus.OFFLINE, reason, seq=state_seq(conn, STATE_SEQ_OFFLINE)))

    def state_message(self, status: DeviceStatus, reason: str | None = None, *, seq: int = 0) -> StateMessage:
        cfg = self.config
        return StateMessage(
            device=cfg.device.id if cfg else "local", status=status, ts=round(self.clock(), 3), boot=self.boot, agent_version=__version__,
            group=cfg.device.group if cfg else "default",
            model={**self.model.summary(), "ready": self.ready, "selftest": self.model.selftest.passed} if status == DeviceStatus.ONLINE else None,
            runtime=runtime_versions(), hardware=hardware_summary() if status == DeviceStatus.ONLINE else {}, reason=reason, seq=seq,
        )

    def register_command(self, kind: CommandKind, handler: CommandHandler) -> None:
        """Handle ``kind`` commands (one handler per kind). Handlers run on the MQTT thread: hand
        long work (downloads, loading a model) to a thread of their own."""
        if kind in self._commands:
            raise ValueError(f"a handler for {kind} commands is already registered")
        self._commands[kind] = handler

    def _on_message(self, topic: str, payload: bytes) -> None:
        if "/ota/" in topic:  # artifact chunks: binary, not protocol messages
            if self.updater is not None and payload:
                self.updater.on_chunk(topic, payload)
            return
        try:
            msg = decode(payload)
        except Exception as e:
            log.warning("MQTT: ignoring a malformed message on %s: %s", topic, e)
            self._reject_undecodable(payload, e)
            return
        if not isinstance(msg, Command):
            log.warning("MQTT: ignoring a %s message on the command topic %s", msg.type, topic)
            return
        handler = self._commands.get(msg.kind)
        if handler is None:
            known = ", ".join(str(k) for k in self._commands) or "none"
            self.report_job(msg.job, JobState.REJECTED, f"this agent does not handle {msg.kind} commands; it handles: {known}")
            return
        handler(msg)

    def _reject_undecodable(self, payload: bytes, error: Exception) -> None:
        """A command we cannot parse but whose job id we can read is answered REJECTED, so the
        fleet is not left waiting (unknown protocol version, missing fields, ...)."""
        import json

        try:
            d = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            return
        job = d.get("job") if isinstance(d, dict) else None
        if isinstance(job, str) and valid_id(job) and d.get("type") in (None, "command"):
            self.report_job(job, JobState.REJECTED, f"the command could not be read: {error}", reason="bad_command")


def hardware_summary() -> dict[str, Any]:
    """What the fleet needs to know about the device (no identifiers beyond the hostname)."""
    out: dict[str, Any] = {
        "machine": platform.machine(),
        "system": platform.system(),
        "release": platform.release(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "hostname": platform.node(),
    }
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    out["memory_mb"] = int(line.split()[1]) // 1024
                    break
    except OSError:
        pass
    try:
        out["board"] = Path("/proc/device-tree/model").read_text().strip("\x00\n ")  # e.g. "Raspberry Pi 4 Model B Rev 1.4"
    except OSError:
        pass
    return out
