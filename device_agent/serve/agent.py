"""The agent: one loaded model that answers predictions, and what every request feeds.

Embedding (no MQTT, no HTTP)::

    from device_agent.serve.agent import Agent

    with Agent.open("out/") as agent:          # loads once, runs the self-test
        p = agent.predict({"x": batch})      # validated; p.outputs, p.top_k, p.request_id

The agent only serves: it validates, runs the model, records the request in its telemetry window
and metrics, and remembers classifier predictions for late feedback. Everything around it — the
MQTT link, the HTTP API, the telemetry loop, over-the-air updates — is wired by
:class:`device_agent.daemon.Daemon` through the seams below (``observer``, ``retire``,
``health_sections``, ``link_connected``).
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypedDict, cast

from device_agent import __version__
from device_agent.contract.errors import InvalidInput, NotReady
from device_agent.contract.types import Array, Feeds, JsonDict
from device_agent.runtime.base import BackendError
from device_agent.runtime.model import Formats, LoadedModel, load_model
from device_agent.serve.prediction import ModelId, Prediction, tensor_json
from device_agent.serve.predictor import WrongVersion
from device_agent.serve.rows import RowValidator
from device_agent.serve.validate import Validator
from device_agent.telemetry.categories import CategoryTracker, category_tracker
from device_agent.telemetry.features import FeatureTracker, select_features
from device_agent.telemetry.feedback import FeedbackLog, FeedbackResult
from device_agent.telemetry.metrics import Metrics
from device_agent.telemetry.pending import PendingFeedback
from device_agent.telemetry.window import Window

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["Agent", "AgentOptions", "Prediction", "RequestObserver", "tensor_json"]

log = logging.getLogger("edgekit.agent")


class AgentOptions(TypedDict, total=False):
    """The constructor's keyword arguments (for :meth:`Agent.open`)."""

    telemetry: bool
    max_batch: int
    max_elements: int
    top_k_default: int
    max_payload_bytes: int
    max_values_per_feature: int
    clock: Callable[[], float]
    feedback_max_rows: int
    feedback_max_bytes: int
    feedback_retention_s: float
    out_of_range: str


class RequestObserver(Protocol):
    """Told about every prediction after it ran (the OTA updater judges a model on probation this way)."""

    def observe(self, model: LoadedModel, inputs: Feeds | None, outputs: Feeds | None, latency_s: float | None,
                error: str | None = None) -> None: ...


class Agent:
    """Serves one model. Thread-safe: ``predict`` may be called from many threads at once.

    Seams for the daemon (all optional; an embedded agent leaves them alone):

    - ``observer``: told about every request (:class:`RequestObserver`);
    - ``retire``: takes the telemetry window of a model an update swapped out, so a window never
      mixes two versions (set while telemetry is published; otherwise the window carries on);
    - ``health_sections``: extra ``GET /healthz`` sections by name (a section that returns None is left out);
    - ``private_sections``: sections shown instead to callers with a token (job history: see ``health``);
    - ``link_connected``: whether the MQTT link is up (the ``edgekit_agent_mqtt_connected`` gauge).
    """

    def __init__(self, model: LoadedModel, *, telemetry: bool = True, max_batch: int = 256, max_elements: int = 16 << 20,
                 top_k_default: int = 5, max_payload_bytes: int = 16 * 1024, max_values_per_feature: int = 256,
                 clock: Callable[[], float] = time.time, feedback_max_rows: int = 100_000, feedback_max_bytes: int = 8 << 20,
                 feedback_retention_s: float = 86_400.0, out_of_range: str = "warn") -> None:
        self.model = model
        self.clock = clock
        self.top_k_default = top_k_default
        self.max_payload_bytes = max_payload_bytes
        self.out_of_range = out_of_range
        self.validator = _validator(model, max_batch=max_batch, max_elements=max_elements, out_of_range=out_of_range)
        self.metrics = Metrics()
        tracker = None
        self._numeric_left_out = 0
        if telemetry and model.manifest is not None and model.manifest.features:
            tracked, self._numeric_left_out = select_features(model.manifest.features, model.inputs, max_payload_bytes)
            tracker = FeatureTracker(tracked, max_values_per_feature=max_values_per_feature)
        self._telemetry = telemetry
        categories = self._category_tracker(model, tracker)
        self.window = Window(tracker, clock=clock, categories=categories)
        self._tracked_inputs = _inputs_of(tracker, categories)
        self._model_id: ModelId = {"name": model.name, "version": model.version}
        self._scores_name = model.outputs[0].name if model.is_classifier and model.outputs else None
        # late ground truth (POST /v1/feedback) is joined with the top-1 of classifier predictions
        self._feedback_pending = PendingFeedback()
        self._feedback = _feedback_log(model, max_rows=feedback_max_rows, max_bytes=feedback_max_bytes, retention_s=feedback_retention_s,
                                       clock=clock)
        # request ids: random per start + a counter (unique, and ~50x cheaper than uuid4 per request)
        self._rid_prefix = uuid.uuid4().hex[:12] + "-"
        self._rid = itertools.count(1)
        self.observer: RequestObserver | None = None
        self.retire: Callable[[Window, LoadedModel], None] | None = None
        self.health_sections: dict[str, Callable[[], object | None]] = {}
        self.private_sections: dict[str, Callable[[], object | None]] = {}
        self.link_connected: Callable[[], bool] = lambda: False
        self.started_at = clock()
        self._ready_reason = model.unfit_reason  # a failed self-test, or a runtime the policy refuses
        self._register_metrics()

    def _register_metrics(self) -> None:
        self.metrics.info = lambda: {"name": self.model.name, "version": self.model.version, "artifact": self.model.file.name,
                                     "runtime": self.model.backend.runtime}
        self.metrics.gauge("edgekit_agent_ready", "1 when the model is loaded and passed its self-test.", lambda: float(self.ready))
        self.metrics.gauge("edgekit_agent_selftest_passed", "1 when the start-up self-test passed.", lambda: float(self.model.selftest.passed))
        # part of GET /metrics with or without a broker (0 without one)
        self.metrics.counter("edgekit_agent_field_unseen_category_total", "Table values of a category the encoder never saw "
                             "(accepted: it ignores unknowns), by field.", "field", lambda: self._field_counts("unseen_category"))
        self.metrics.counter("edgekit_agent_field_out_of_range_total", "Table values outside the training range accepted "
                             "([serve] out_of_range = warn), by field.", "field", lambda: self._field_counts("out_of_range"))
        self.metrics.gauge("edgekit_agent_mqtt_connected", "1 while connected to the MQTT broker.", lambda: float(self.link_connected()))

    def _field_counts(self, which: str) -> dict[str, int]:
        v = self.validator
        return v.counts.snapshot()[which] if isinstance(v, RowValidator) else {}

    @classmethod
    def open(cls, path: str | Path, *, prefer: Formats = ("ort", "onnx", "tflite"), threads: int = 0, artifact: str | None = None,
             verify: bool = True, selftest: bool = True, **options: Unpack[AgentOptions]) -> Agent:
        """An in-process agent for ``path`` (model directory or file): no MQTT, no HTTP. ``options`` go to the constructor."""
        model = load_model(path, prefer=prefer, threads=threads, artifact=artifact, verify=verify, selftest=selftest)
        return cls(model, **options)

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        """Nothing to release: the model's runtime session goes with the object."""

    # --- serving ---------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready_reason is None

    @property
    def not_ready_reason(self) -> str | None:
        return self._ready_reason

    @property
    def max_elements(self) -> int:
        return self.validator.max_elements

    @property
    def features_left_out(self) -> int:
        """Tracked features left out of telemetry windows to keep them under the payload budget (numeric and categorical)."""
        return self._numeric_left_out + self._categories_left_out

    @property
    def max_batch(self) -> int:
        return self.validator.max_batch

    def predict(self, inputs: Mapping[str, object], *, top_k: int | None = None, request_id: str | None = None,
                version: str | None = None) -> Prediction:
        """Validate ``inputs`` (source layout, names → arrays or nested lists), run the model.

        Args:
            inputs: one entry per model input.
            top_k: labels to return per sample for classifiers (default from config; 0 = none).
            request_id: caller's id for tracing (default: a new id).
            version: run only if the model that would answer has this version (checked on the very
                model the request runs on, so an update swapping models meanwhile cannot slip in).

        Raises:
            InvalidInput: the request does not fit the signature (nothing ran).
            WrongVersion: ``version`` is not the version served (nothing ran).
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
        if version is not None and model.version != version:
            raise WrongVersion(f"model {model.name!r} version {version!r} is not served; this agent serves version {model.version!r}",
                               kind="not_found", expected=model.version, given=version)
        observer = self.observer
        t0 = time.perf_counter()
        try:
            outputs = model.run(arrays)
        except BackendError:
            self._count_error("runtime", inputs=tracked)
            if observer is not None:
                observer.observe(model, arrays, None, None, "runtime")
            raise
        dt = time.perf_counter() - t0
        if observer is not None:
            observer.observe(model, arrays, outputs, dt)
        self.window.record(dt, inputs=tracked)  # one lock for the request count, latency and features
        first = next(iter(arrays.values()))
        self.metrics.prediction(dt, int(first.shape[0]) if first.ndim else 1)
        return self._answer(model, outputs, dt, top_k=top_k, request_id=request_id)

    def _answer(self, model: LoadedModel, outputs: Feeds, dt: float, *, top_k: int | None, request_id: str | None) -> Prediction:
        scores = outputs.get(self._scores_name) if self._scores_name else None
        if scores is not None and not (scores.ndim in (1, 2) and scores.dtype.kind == "f"):
            scores = None
        rid = request_id or f"{self._rid_prefix}{next(self._rid):x}"
        mid = self._model_id if self._model_id["version"] == model.version else {"name": model.name, "version": model.version}
        # joined into the feedback log off the request path (see the feedback property), from a copy
        if scores is not None and self._feedback is not None and self._feedback_pending.add(rid, mid["version"], scores):
            self.flush_feedback()
        return Prediction(outputs, mid, rid, self.clock(), dt * 1000.0,
                          scores=scores, k=self.top_k_default if top_k is None else top_k, labels=model.labels)

    def _count_error(self, kind: str, *, inputs: Mapping[str, Array] | None = None) -> None:
        self.window.record(None, error=kind, inputs=inputs)
        self.metrics.error(kind)

    # --- feedback ----------------------------------------------------------------------------------

    @property
    def feedback(self) -> FeedbackLog | None:
        """The log of classifier predictions awaiting ground truth (pending records joined first)."""
        self.flush_feedback()
        return self._feedback

    def flush_feedback(self) -> None:
        """Join the predictions recorded since the last flush into the feedback log."""
        items = self._feedback_pending.take_top1() if len(self._feedback_pending) else []
        if items and self._feedback is not None:
            self._feedback.record_top1(items)

    def submit_feedback(self, items: list[object]) -> list[FeedbackResult]:
        """Join late ground truth with earlier predictions (see :mod:`device_agent.telemetry.feedback`); never raises on bad items."""
        log_ = self.feedback
        if log_ is None:
            return [FeedbackResult("bad_label", _request_id(item), "this model is not a classifier: feedback labels cannot be joined")
                    for item in items]
        return log_.submit_many(items)

    def reject_feedback(self, problem: str) -> FeedbackResult:
        """Count a feedback request body that was not feedback at all (invalid JSON, wrong shape)."""
        log_ = self.feedback
        return log_.reject_request(problem) if log_ is not None else FeedbackResult("malformed", None, problem)

    # --- information -------------------------------------------------------------------------------

    def signature_text(self) -> str:
        """The inputs the model takes, for error messages: ``x (float32 [N, 1, 8, 8])``."""
        return self.validator.signature_text()

    def model_info(self) -> JsonDict:
        """``GET /v1/model``: identity, signature (source layout), artifact, self-test, runtime check, tracked features."""
        m = self.model
        return {
            **m.summary(),
            "task": m.task,
            "labels": list(m.labels) if m.labels else None,
            "inputs": [s.to_dict() for s in m.inputs],
            "outputs": [s.to_dict() for s in m.outputs],
            "selftest": m.selftest.to_dict(),
            "runtime_check": m.runtime_check.to_dict(),
            "load_seconds": round(m.load_seconds, 4),
            "created_at": m.manifest.created_at if m.manifest else None,
            "metrics": m.manifest.metrics.get(m.file.name) if m.manifest else None,
            "tracked_features": ([f.name for f in self.window.tracker.features] if self.window.tracker else [])
                                + ([f.name for f in self.window.categories.features] if self.window.categories else []),
            "limits": {"max_batch": self.validator.max_batch, "max_elements": self.validator.max_elements},
        }

    def health(self, *, private: bool = True) -> JsonDict:
        """``GET /healthz`` (without its ``status``): readiness, uptime, the model, and the daemon's sections.

        ``private``: the caller may see everything (it sent a token, or the API needs none): a section
        in ``private_sections`` replaces its public form (the OTA job history is shown only then)."""
        out: JsonDict = {"ready": self.ready, "reason": self._ready_reason, "uptime_s": round(self.clock() - self.started_at, 3),
                         "model": self.model.summary(), "agent_version": __version__}
        sections = {**self.health_sections, **self.private_sections} if private else self.health_sections
        for name, section in sections.items():
            value = section()
            if value is not None:
                out[name] = value
        return out

    def readiness(self) -> JsonDict:
        """``GET /readyz``: whether predictions are answered, and the self-test behind it."""
        return {"ready": self.ready, "reason": self._ready_reason, "selftest": self.model.selftest.to_dict()}

    # --- updates -----------------------------------------------------------------------------------

    def swap_model(self, new: LoadedModel) -> LoadedModel:
        """Serve ``new`` from the next request on (one reference store); requests already running
        finish on the old model. Returns the old model (the OTA updater keeps it for a fast rollback)."""
        old = self.model
        if tuple(new.inputs) != tuple(old.inputs) or _fields(new) != _fields(old):  # an update allowed to change the signature
            self.validator = _validator(new, max_batch=self.validator.max_batch, max_elements=self.validator.max_elements,
                                        out_of_range=self.out_of_range)
        if self.retire is not None:
            # A telemetry window never mixes two versions: the old model's window is handed over here (O(1)) and
            # published by the telemetry thread, so the swap itself does no encoding or disk I/O.
            tracker = self._next_tracker(old, new)
            self.retire(self.window, old)
            categories = self._category_tracker(new, tracker)
            self.window = Window(tracker, clock=self.clock, categories=categories)
            self._tracked_inputs = _inputs_of(tracker, categories)
        self._model_id = {"name": new.name, "version": new.version}
        self.model = new
        self._ready_reason = new.unfit_reason
        log.info("serving %s %s (was %s)", new.name, new.version, old.version)
        return old

    def _category_tracker(self, model: LoadedModel, numeric: FeatureTracker | None) -> CategoryTracker | None:
        self._categories_left_out = 0
        if not self._telemetry or model.manifest is None:
            return None
        tracker, self._categories_left_out = category_tracker(model.manifest, numeric.features if numeric else [], self.max_payload_bytes)
        return tracker

    def _next_tracker(self, old: LoadedModel, new: LoadedModel) -> FeatureTracker | None:
        """The feature tracker for ``new``'s window: its own reference profile when it brings one."""
        tracker = self.window.tracker
        if tracker is None:
            return None
        features = tracker.features
        if new.manifest is not None and new.manifest.features \
                and tuple(new.manifest.features) != tuple(old.manifest.features if old.manifest else ()):
            features, self._numeric_left_out = select_features(new.manifest.features, new.inputs, self.max_payload_bytes)
        return FeatureTracker(features, max_values_per_feature=tracker.max_values)


def _inputs_of(numeric: FeatureTracker | None, categories: CategoryTracker | None) -> set[str]:
    """The inputs a request's telemetry reads (the others are not handed to the window)."""
    return ({f.input for f in numeric.features} if numeric else set()) | (categories.inputs if categories else set())


def _fields(model: LoadedModel) -> tuple[object, ...]:
    return model.manifest.fields if model.manifest is not None else ()


def _validator(model: LoadedModel, *, max_batch: int, max_elements: int, out_of_range: str) -> Validator | RowValidator:
    """Field by field for a model that takes table rows (its manifest lists ``signature.fields``), else tensor by tensor."""
    if model.manifest is not None and model.manifest.fields:
        return RowValidator(model.manifest.fields, model.inputs, max_batch=max_batch, max_elements=max_elements, out_of_range=out_of_range)
    return Validator(model.inputs, max_batch=max_batch, max_elements=max_elements)


def _feedback_log(model: LoadedModel, *, max_rows: int, max_bytes: int, retention_s: float, clock: Callable[[], float]) -> FeedbackLog | None:
    """A feedback log for classifiers (their first output holds the class scores); None for other models."""
    if not (model.is_classifier and model.outputs):
        return None
    width = model.outputs[0].shape[-1] if model.outputs[0].shape else None
    return FeedbackLog(labels=model.labels, classes=width if isinstance(width, int) else None, max_rows=max_rows, max_bytes=max_bytes,
                       retention_s=retention_s, clock=clock)


def _request_id(item: object) -> str | None:
    """The item's request_id as given: echoed back in the answer that says why the item was refused."""
    return cast("str | None", item.get("request_id")) if isinstance(item, dict) else None
