"""What the HTTP server needs from whatever answers predictions: a small protocol.

:class:`device_agent.serve.agent.Agent` is the implementation; tests may serve anything else with
these members.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from device_agent.contract.errors import InvalidInput
from device_agent.contract.types import JsonDict
from device_agent.runtime.model import LoadedModel
from device_agent.serve.prediction import Prediction
from device_agent.telemetry.feedback import FeedbackResult
from device_agent.telemetry.metrics import Metrics

__all__ = ["Predictor", "WrongVersion"]


class WrongVersion(InvalidInput):
    """A request for a model version that is not the one served (an update may have just replaced it): HTTP 404."""

    status = 404


class Predictor(Protocol):
    """Predictions, model information, health, metrics and late feedback, for one served model."""

    @property
    def model(self) -> LoadedModel:
        """The model served now (its signature shapes the OpenAPI document and raw .npy bodies)."""
        ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def max_elements(self) -> int:
        """Tensor elements a request may hold, all inputs together (compressed bodies are checked against it before inflating)."""
        ...

    def predict(self, inputs: Mapping[str, object], *, top_k: int | None = None, request_id: str | None = None,
                version: str | None = None) -> Prediction:
        """Validate and run; ``version``: refuse (``WrongVersion``) unless the model that would answer has this version."""
        ...

    def signature_text(self) -> str: ...

    def model_info(self) -> JsonDict: ...

    def health(self, *, private: bool = True) -> JsonDict:
        """``GET /healthz`` without its ``status``; ``private=False`` leaves out what only a token holder may see (job history)."""
        ...

    def readiness(self) -> JsonDict:
        """``{"ready", "reason", "selftest"}``; ``ready`` decides 200 or 503."""
        ...

    def submit_feedback(self, items: list[object]) -> list[FeedbackResult]: ...

    def reject_feedback(self, problem: str) -> FeedbackResult: ...
