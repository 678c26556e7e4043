"""Model accuracy from late labels: devices join ground truth with their predictions and report
(labelled, correct) per model version in telemetry (``feedback``).

Over the lookback, once ``accuracy_min_labelled`` rows are labelled, a device or group alerts when
even the optimistic end of the confidence interval of its accuracy (Wilson, one-sided
``accuracy_confidence``) lies below the manifest's accuracy minus ``accuracy_max_drop``; it warns
when only the observed accuracy does.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict

from device_agent.contract.protocol import TelemetryMessage
from edgekit.monitor.config import MonitorConfig
from edgekit.monitor.drift import Level
from edgekit.monitor.stats import wilson_bounds
from edgekit.monitor.store import UNKNOWN, FleetHistory, Span

__all__ = ["AccuracyReport", "accuracy_counts", "accuracy_report", "group_accuracy_pairs", "judge_accuracy", "span_accuracy"]


class AccuracyReport(BaseModel):
    """Joined late labels of one device or group on one model version, against the manifest's accuracy."""

    model_config = ConfigDict(frozen=True)

    scope: str
    name: str
    model: str
    version: str
    labelled: int
    correct: int
    accuracy: float | None
    baseline: float | None
    upper_bound: float | None
    level: Level
    reason: str

    def to_dict(self) -> dict[str, Any]:
        d = self.model_dump()
        d["level"] = str(self.level)
        for k in ("accuracy", "baseline", "upper_bound"):
            if d[k] is not None:
                d[k] = round(d[k], 4)
        return d


def accuracy_counts(messages: Iterable[TelemetryMessage], model: str, version: str) -> tuple[int, int]:
    """(labelled, correct) rows for predictions of ``model`` ``version`` in these windows' feedback."""
    labelled = correct = 0
    for msg in messages:
        if msg.feedback and (msg.model or {}).get("name", model) == model:
            c = msg.feedback.accuracy.get(version)
            if c:
                labelled += int(c.get("labelled", 0))
                correct += int(c.get("correct", 0))
    return labelled, correct


def span_accuracy(spans: Iterable[Span], model: str, version: str) -> tuple[int, int]:
    """(labelled, correct) rows for predictions of ``model`` ``version`` in these spans (windows that named no model count for any)."""
    labelled = correct = 0
    for s in spans:
        if s.version == version and s.model in (model, UNKNOWN):
            labelled += s.totals.labelled
            correct += s.totals.correct
    return labelled, correct


def group_accuracy_pairs(spans: Iterable[Span]) -> list[tuple[str, str]]:
    """(model, version) of every prediction version with late labels in these spans, sorted."""
    return sorted({(s.model, s.version) for s in spans if s.totals.labelled})


def judge_accuracy(scope: str, name: str, *, model: str, version: str, labelled: int, correct: int, baseline: float | None,
                   config: MonitorConfig) -> AccuracyReport:
    """The verdict on ``correct`` of ``labelled`` rows of ``name`` (a device or group) against ``baseline`` (a fraction)."""
    common: dict[str, Any] = {"scope": scope, "name": name, "model": model, "version": version, "labelled": labelled, "correct": correct,
                              "accuracy": correct / labelled if labelled else None, "baseline": baseline}
    if baseline is None:
        return AccuracyReport(**common, upper_bound=None, level=Level.NOT_ENOUGH_DATA,
                              reason=f"no baseline accuracy for {model} {version} (register its manifest)")
    if labelled < config.accuracy_min_labelled:
        return AccuracyReport(**common, upper_bound=None, level=Level.NOT_ENOUGH_DATA,
                              reason=f"{labelled} labelled rows < {config.accuracy_min_labelled} needed")
    acc = correct / labelled  # at least accuracy_min_labelled (>= 1) rows here
    _, upper = wilson_bounds(correct, labelled, config.accuracy_confidence)
    bound = baseline - config.accuracy_max_drop
    if upper < bound:
        level, reason = Level.ALERT, (f"accuracy {acc:.1%} on {labelled} labelled rows (≤ {upper:.1%} at {config.accuracy_confidence:.0%}) "
                                      f"is below {bound:.1%} (baseline {baseline:.1%} - {config.accuracy_max_drop:.1%})")
    elif acc < bound:
        level, reason = Level.WARN, f"accuracy {acc:.1%} on {labelled} labelled rows is below {bound:.1%}, not yet significant"
    else:
        level, reason = Level.OK, f"accuracy {acc:.1%} on {labelled} labelled rows (baseline {baseline:.1%})"
    return AccuracyReport(**common, upper_bound=upper, level=level, reason=reason)


def accuracy_report(store: FleetHistory, device: str, model: str, version: str, *, since: float, config: MonitorConfig,
                    artifact: str | None = None) -> AccuracyReport:
    """Joined late labels of one device and model version since ``since`` against the manifest's accuracy."""
    labelled, correct = span_accuracy(store.spans(device=device, since=since), model, version)
    ref = store.reference(model, version)
    return judge_accuracy("device", device, model=model, version=version, labelled=labelled, correct=correct,
                          baseline=ref.baseline_accuracy(artifact) if ref else None, config=config)
