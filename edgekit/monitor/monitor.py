"""The monitor's judgement, without any I/O: messages in, stored history and alerts out.

:class:`Monitor` takes decoded MQTT payloads (``handle(topic, payload)``), files them in a
:class:`~edgekit.monitor.store.FleetStore`, judges drift and accuracy, and returns the alerts to
publish. The collector (:mod:`edgekit.monitor.collector`) feeds it from MQTT; tests feed it
directly.

Drift, per device: on each telemetry window, the newest windows of that device *and model version*
are merged, newest first, until they cover the minimum sample count — a single window when it is
large enough, so a shift shows up within one window of sufficient size; several small windows on a
quiet device. Per group: every ``group_interval_s``, all windows of the group's devices over the
lookback, per model version.

State: the last verdict per feature is stored with the time it started. An alert goes out when a
feature rises to warn or alert (naming the features that moved most and since when), and a
"resolved" message when every feature is back to ok. A model update starts a new state (results
are per model version), and a drift that starts right after an update names the update.

Accuracy: devices report joined late labels per model version (``feedback`` in telemetry). Over
the lookback, once ``accuracy_min_labelled`` rows are labelled, a device alerts when even the
optimistic end of the confidence interval of its accuracy (Wilson, one-sided
``accuracy_confidence``) lies below the manifest's accuracy minus ``accuracy_max_drop``; it
warns when only the observed accuracy does.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from device_agent.contract.errors import OtaError as DeviceOtaError
from device_agent.contract.errors import ProtocolError
from device_agent.contract.manifest import Manifest, ManifestError
from device_agent.contract.protocol import Command, CommandKind, StateMessage, TelemetryMessage, decode
from device_agent.ota.verify import TrustedKeys, verify_manifest
from edgekit.monitor.alerts import alert_payload, fmt_time
from edgekit.monitor.drift import DriftReport, DriftThresholds, FeatureDrift, Level, WindowSet, evaluate, min_samples_for, worst
from edgekit.monitor.store import DriftState, FleetStore, Reference

__all__ = [
    "ACCURACY",
    "AccuracyReport",
    "Monitor",
    "MonitorConfig",
    "accuracy_counts",
    "accuracy_report",
    "drift_reports",
    "drift_summary",
    "judge_accuracy",
    "wilson_bounds",
]

log = logging.getLogger("edgekit.monitor")

#: the drift_state row that holds a device's accuracy verdict (not a feature name: features never start with "(")
ACCURACY = "(accuracy)"


class MonitorConfig(BaseModel):
    """How the monitor judges. Shares and accuracies are fractions."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    thresholds: DriftThresholds = Field(default_factory=DriftThresholds, description="Drift warn/alert thresholds and minimum samples.")
    lookback_s: float = Field(3600.0, gt=0, description="How far back windows are merged for a verdict (devices) or a group report.")
    group_interval_s: float = Field(60.0, gt=0, description="How often groups are judged.")
    accuracy_max_drop: float = Field(0.05, ge=0, le=1, description="Accuracy below the manifest's minus this drop is a problem (0.05 = 5 points).")
    accuracy_min_labelled: int = Field(100, ge=1, description="Labelled rows needed before accuracy is judged.")
    accuracy_confidence: float = Field(0.95, gt=0.5, lt=1, description="One-sided confidence for an accuracy alert.")
    max_features_in_alert: int = Field(5, ge=1, description="Features named in one alert (the most moved).")
    retention_s: float = Field(30 * 86400.0, gt=0, description="Telemetry history kept in the store.")


# --- accuracy ------------------------------------------------------------------------------------


def wilson_bounds(correct: int, n: int, confidence: float) -> tuple[float, float]:
    """One-sided Wilson score bounds (lower, upper) of a proportion at ``confidence``."""
    if n <= 0:
        return 0.0, 1.0
    from edgekit.monitor.drift import _normal_quantile

    z = _normal_quantile(confidence)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


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


def accuracy_counts(messages: list[TelemetryMessage], model: str, version: str) -> tuple[int, int]:
    """(labelled, correct) rows for predictions of ``model`` ``version`` in these windows' feedback."""
    labelled = correct = 0
    for msg in messages:
        if msg.feedback and (msg.model or {}).get("name", model) == model:
            c = msg.feedback.accuracy.get(version)
            if c:
                labelled += int(c.get("labelled", 0))
                correct += int(c.get("correct", 0))
    return labelled, correct


def judge_accuracy(scope: str, name: str, model: str, version: str, labelled: int, correct: int, baseline: float | None,
                   config: MonitorConfig) -> AccuracyReport:
    """The verdict on ``correct`` of ``labelled`` rows against ``baseline`` (a fraction)."""
    acc = correct / labelled if labelled else None
    common = {"scope": scope, "name": name, "model": model, "version": version, "labelled": labelled, "correct": correct, "accuracy": acc,
              "baseline": baseline}
    if baseline is None:
        return AccuracyReport(**common, upper_bound=None, level=Level.NOT_ENOUGH_DATA,
                              reason=f"no baseline accuracy for {model} {version} (register its manifest)")
    if labelled < config.accuracy_min_labelled:
        return AccuracyReport(**common, upper_bound=None, level=Level.NOT_ENOUGH_DATA,
                              reason=f"{labelled} labelled rows < {config.accuracy_min_labelled} needed")
    _, upper = wilson_bounds(correct, labelled, config.accuracy_confidence)
    bound = baseline - config.accuracy_max_drop
    assert acc is not None
    if upper < bound:
        level, reason = Level.ALERT, (f"accuracy {acc:.1%} on {labelled} labelled rows (≤ {upper:.1%} at {config.accuracy_confidence:.0%}) "
                                      f"is below {bound:.1%} (baseline {baseline:.1%} - {config.accuracy_max_drop:.1%})")
    elif acc < bound:
        level, reason = Level.WARN, f"accuracy {acc:.1%} on {labelled} labelled rows is below {bound:.1%}, not yet significant"
    else:
        level, reason = Level.OK, f"accuracy {acc:.1%} on {labelled} labelled rows (baseline {baseline:.1%})"
    return AccuracyReport(**common, upper_bound=upper, level=level, reason=reason)


def accuracy_report(store: FleetStore, device: str, model: str, version: str, *, since: float, config: MonitorConfig,
                    artifact: str | None = None) -> AccuracyReport:
    """Joined late labels of one device and model version since ``since`` against the manifest's accuracy."""
    labelled, correct = accuracy_counts(store.telemetry(device=device, since=since), model, version)
    ref = store.reference(model, version)
    return judge_accuracy("device", device, model, version, labelled, correct, ref.baseline_accuracy(artifact) if ref else None, config)


# --- reports over the store -----------------------------------------------------------------------


def group_windows(messages: list[TelemetryMessage], key: Callable[[TelemetryMessage], str | None]) -> dict[tuple[str, str, str], WindowSet]:
    """Merge windows per (key, model, version); messages whose key is None are skipped."""
    out: dict[tuple[str, str, str], WindowSet] = {}
    for msg in messages:
        k = key(msg)
        if k is None:
            continue
        model = (msg.model or {}).get("name") or "?"
        version = (msg.model or {}).get("version") or "?"
        ws = out.get((k, model, version))
        if ws is None:
            ws = out[(k, model, version)] = WindowSet(model, version)
        ws.add(msg)
    return out


def judge(sets: dict[tuple[str, str, str], WindowSet], store: FleetStore, scope: str, thresholds: DriftThresholds) -> list[DriftReport]:
    """A report per merged set; a set without a registered reference gets level "not enough data" and no features."""
    reports = []
    for (name, model, version), ws in sorted(sets.items()):
        ref = store.reference(model, version)
        if ref is None:
            reports.append(DriftReport(scope, name, model, version, Level.NOT_ENOUGH_DATA, (), ws.samples, ws.windows,
                                       tuple(sorted(ws.devices)), ws.start, ws.end, untracked=tuple(sorted(ws.features))))
            continue
        reports.append(evaluate(ws, ref.features, scope=scope, name=name, thresholds=thresholds))
    return reports


def drift_reports(store: FleetStore, *, device: str | None = None, group: str | None = None, window_s: float = 3600.0,
                  thresholds: DriftThresholds | None = None, now: float | None = None, per_device: bool = True) -> list[DriftReport]:
    """Drift over the last ``window_s``: per device (``device`` or every device), or per group
    (``group``: the group merged, then each of its devices unless not ``per_device``). One report per model version."""
    t = thresholds or DriftThresholds()
    since = (time.time() if now is None else now) - window_s
    if group is not None:
        msgs = store.telemetry(group=group, since=since)
        return (judge(group_windows(msgs, lambda m: group), store, "group", t)
                + (judge(group_windows(msgs, lambda m: m.device), store, "device", t) if per_device else []))
    msgs = store.telemetry(device=device, since=since)
    return judge(group_windows(msgs, lambda m: m.device), store, "device", t)


def drift_summary(store: FleetStore, device: str) -> dict[str, Any] | None:
    """The drift column of ``fleet status`` for one device, from the monitor's stored verdicts.

    Returns None when the monitor never judged the device, else ``{level, model, version, features
    (moved, most first), since, accuracy (level or None), text}``; ``text`` is the table cell, e.g.
    ``alert: x[3], x[7] since 08:31Z``.
    """
    latest = store.latest_drift("device", device)
    if latest is None:
        return None
    model, version, states = latest
    acc = states.pop(ACCURACY, None)
    moved = sorted((s for s in states.values() if Level(s.level).rank >= Level.WARN.rank),
                   key=lambda s: (Level(s.level).rank, s.psi or 0.0), reverse=True)
    judged = [Level(s.level) for s in states.values()]
    level = worst(judged) if judged else Level.NOT_ENOUGH_DATA
    since = min((s.since for s in moved), default=None)
    if moved:
        names = ", ".join(s.feature for s in moved[:3]) + (f" +{len(moved) - 3}" if len(moved) > 3 else "")
        text = f"{level}: {names} since {fmt_time(since)[11:]}"
    else:
        text = level.text
    if acc is not None and Level(acc.level).rank >= Level.WARN.rank:
        text += f"; accuracy {acc.level}"
    return {"level": str(level), "model": model, "version": version, "features": [s.feature for s in moved], "since": since,
            "accuracy": acc.level if acc else None, "text": text}


# --- the engine ------------------------------------------------------------------------------------


class Monitor:
    """Files messages, judges drift and accuracy, returns alert payloads. Thread-safe.

    Args:
        store: where history and verdicts live.
        config: thresholds and windows.
        collector: this monitor's id (stored with each window, named in alerts).
        clock: time source.
        trusted: when given, a manifest seen in a deploy command becomes a reference only if its
            signature verifies against these keys (anyone who can publish could otherwise plant one).
    """

    def __init__(self, store: FleetStore, config: MonitorConfig | None = None, *, collector: str = "", clock: Callable[[], float] = time.time,
                 trusted: TrustedKeys | None = None) -> None:
        self.store = store
        self.trusted = trusted
        self.config = config or MonitorConfig()
        self.collector = collector
        self.clock = clock
        self._lock = threading.Lock()
        self.stats: dict[str, int] = {"telemetry": 0, "duplicates": 0, "states": 0, "malformed": 0, "references": 0, "alerts": 0}
        self.missing_reference: set[tuple[str, str]] = set()
        self._last_groups = 0.0
        self._references: dict[tuple[str, str], Reference] = {}

    # --- references --------------------------------------------------------------------------------

    def register(self, manifest: Manifest, source: str = "") -> Reference:
        """Judge ``manifest``'s model version against its own drift profile and accuracy."""
        ref = Reference.from_manifest(manifest, source)
        self.store.add_reference(ref)
        self._references[(ref.model, ref.version)] = ref
        self.missing_reference.discard((ref.model, ref.version))
        self.stats["references"] += 1
        return ref

    def _reference(self, model: str, version: str) -> Reference | None:
        # parsed profiles are cached; another collector sharing the store may add one, so misses are re-read
        ref = self._references.get((model, version))
        if ref is None:
            ref = self.store.reference(model, version)
            if ref is not None:
                self._references[(model, version)] = ref
        return ref

    def _from_command(self, cmd: Command) -> None:
        if cmd.kind != CommandKind.DEPLOY:
            return
        encoded = cmd.params.get("manifest")
        if not isinstance(encoded, str):
            return
        try:
            raw = base64.b64decode(encoded, validate=True)
            manifest = Manifest.from_dict(json.loads(raw), f"deploy job {cmd.job}")
        except (binascii.Error, ValueError, ManifestError) as e:
            log.warning("monitor: deploy job %s carries no readable manifest: %s", cmd.job, e)
            return
        if self.trusted is not None:
            try:
                verify_manifest(raw, cmd.params.get("signature"), self.trusted)
            except DeviceOtaError as e:
                self.stats["rejected_references"] = self.stats.get("rejected_references", 0) + 1
                log.warning("monitor: not using the manifest of deploy job %s as a reference: %s", cmd.job, e)
                return
        self.register(manifest, source=f"deploy job {cmd.job}")

    # --- messages ------------------------------------------------------------------------------------

    def handle(self, topic: str, payload: bytes) -> list[dict[str, Any]]:
        """Take one MQTT message; returns the alerts it raised. Never raises on bad payloads."""
        if not payload:
            return []  # a cleared retained message
        try:
            msg = decode(payload)
        except (ProtocolError, ValueError, TypeError, KeyError, AttributeError) as e:  # decode validates most, not every field
            self.stats["malformed"] += 1
            log.warning("monitor: ignoring a malformed message on %s: %s", topic, e)
            return []
        with self._lock:
            if isinstance(msg, TelemetryMessage):
                return self._telemetry(msg, payload)
            if isinstance(msg, StateMessage):
                self.store.record_state(msg)
                self.stats["states"] += 1
            elif isinstance(msg, Command):
                self._from_command(msg)
        return []

    def _telemetry(self, msg: TelemetryMessage, payload: bytes) -> list[dict[str, Any]]:
        if not self.store.add_telemetry(msg, payload, collector=self.collector):
            self.stats["duplicates"] += 1
            return []
        self.stats["telemetry"] += 1
        model, version = (msg.model or {}).get("name"), (msg.model or {}).get("version")
        alerts: list[dict[str, Any]] = []
        if model and version:
            report = self.device_drift(msg.device, model, version)
            if report is not None:
                rec = self.store.device(msg.device)
                alerts += self._transition(report, device=msg.device, group=rec.group if rec and rec.status != "unknown" else None)
            if msg.feedback:
                for v in msg.feedback.accuracy:
                    alerts += self._accuracy(msg.device, model, v)
        self.stats["alerts"] += len(alerts)
        return alerts

    def device_drift(self, device: str, model: str, version: str) -> DriftReport | None:
        """The device's newest windows on this version, merged until they are enough, judged (None: no reference)."""
        ref = self._reference(model, version)
        if ref is None:
            if (model, version) not in self.missing_reference:
                self.missing_reference.add((model, version))
                log.warning("monitor: no drift reference for %s %s (seen on %s); register its manifest: "
                            "edgekit fleet watch --model DIR, or deploy it with edgekit fleet deploy", model, version, device)
            return None
        need = max((min_samples_for(f.counts, self.config.thresholds) for f in ref.features), default=1)
        msgs = self.store.recent(device, model, version, samples=need, since=self.clock() - self.config.lookback_s)
        ws = WindowSet(model, version)
        for m in msgs:
            ws.add(m)
        report = evaluate(ws, ref.features, scope="device", name=device, thresholds=self.config.thresholds)
        if len(msgs) > 1 and any(f.nan for f in msgs[0].features):
            # merging dilutes a burst: a small newest window still gets its own NaN verdict (valid at any size)
            newest = WindowSet(model, version)
            newest.add(msgs[0])
            alone = {f.name: f for f in evaluate(newest, ref.features, scope="device", name=device, thresholds=self.config.thresholds).features}
            features = tuple(alone[f.name] if f.name in alone and alone[f.name].level.rank > f.level.rank else f for f in report.features)
            report = dataclasses.replace(report, features=features, level=worst(f.level for f in features))
        return report

    def evaluate_groups(self, *, force: bool = False) -> list[dict[str, Any]]:
        """Judge every group (at most every ``group_interval_s`` unless ``force``); returns alerts."""
        now = self.clock()
        if not force and now - self._last_groups < self.config.group_interval_s:
            return []
        self._last_groups = now
        alerts: list[dict[str, Any]] = []
        groups = {d.group for d in self.store.devices()}
        for g in sorted(groups):
            for report in drift_reports(self.store, group=g, window_s=self.config.lookback_s, thresholds=self.config.thresholds, now=now,
                                        per_device=False):
                if report.features:
                    with self._lock:
                        alerts += self._transition(report, group=g)
            with self._lock:
                alerts += self._group_accuracy(g, now)
        self.stats["alerts"] += len(alerts)
        return alerts

    # --- state and alerts ----------------------------------------------------------------------------

    def _update_of(self, device: str, model: str, version: str, since: float) -> dict[str, Any] | None:
        """The update that put ``version`` on the device, when the drift started within the lookback after it."""
        history = [h for h in self.store.version_history(device) if h[0] == model]
        for i, (_, v, first) in enumerate(history):
            if v == version and i > 0 and since - first <= self.config.lookback_s:
                return {"from": history[i - 1][1], "at": first}
        return None

    def _transition(self, report: DriftReport, *, device: str | None = None, group: str | None = None) -> list[dict[str, Any]]:
        scope, name = report.scope, report.name
        prev = self.store.drift_state(scope, name, report.model, report.version)
        prev.pop(ACCURACY, None)
        now = report.end or self.clock()
        # a device verdict covers a few recent windows: the drift is dated from their start; a group's
        # covers the whole lookback, so it is dated from when it was first seen
        start = (report.start or now) if scope == "device" else now
        states: list[DriftState] = []
        escalated: list[FeatureDrift] = []
        since_of: dict[str, float] = {}
        for f in report.features:
            if f.level is Level.NOT_ENOUGH_DATA:
                continue
            p = prev.get(f.name)
            prev_level = Level(p.level) if p else Level.OK
            same_side = p is not None and (prev_level.rank >= Level.WARN.rank) == (f.level.rank >= Level.WARN.rank)
            since = p.since if same_side and p is not None else start
            since_of[f.name] = since
            states.append(DriftState(f.name, str(f.level), since, now, f.psi))
            if f.level.rank >= Level.WARN.rank and f.level.rank > prev_level.rank:
                escalated.append(f)
        if not states:
            return []
        self.store.set_drift_state(scope, name, report.model, report.version, states)
        current = {**{k: Level(v.level) for k, v in prev.items()}, **{s.feature: Level(s.level) for s in states}}
        was_bad = any(Level(v.level).rank >= Level.WARN.rank for v in prev.values())
        is_bad = any(lv.rank >= Level.WARN.rank for lv in current.values())
        base = {"scope": scope, "name": name, "device": device, "group": group, "model": {"name": report.model, "version": report.version},
                "window": {"start": report.start, "end": report.end}, "samples": report.samples, "collector": self.collector,
                "ts": round(self.clock(), 3)}
        if escalated:
            moved = report.moved[: self.config.max_features_in_alert]
            level = worst(f.level for f in report.features)
            since = min(since_of[f.name] for f in moved)
            update = self._update_of(device, report.model, report.version, since) if device else None
            names = ", ".join(f.name for f in moved)
            text = (f"{name}: input drift ({level}) in {names} since {fmt_time(since)} on {report.model} {report.version}"
                    + (f", after the update from {update['from']} at {fmt_time(update['at'])}" if update else "")
                    + f" ({moved[0].reasons[0] if moved[0].reasons else ''})")
            features = [{**f.to_dict(), "since": since_of[f.name]} for f in moved]
            payload = alert_payload(kind="drift", level=str(level), since=since, features=features, update=update, message=text, **base)
            self.store.add_alert("drift", scope, name, report.model, report.version, str(level), payload, ts=base["ts"])
            return [payload]
        if was_bad and not is_bad:
            text = f"{name}: input drift resolved on {report.model} {report.version}; every feature is back within thresholds"
            payload = alert_payload(kind="resolved", level="ok", since=start, features=[], update=None, message=text, **base)
            self.store.add_alert("resolved", scope, name, report.model, report.version, "ok", payload, ts=base["ts"])
            return [payload]
        return []

    def _accuracy(self, device: str, model: str, version: str) -> list[dict[str, Any]]:
        rec = self.store.device(device)
        rep = accuracy_report(self.store, device, model, version, since=self.clock() - self.config.lookback_s, config=self.config,
                              artifact=rec.artifact if rec and rec.version == version else None)
        return self._accuracy_transition(rep, device=device, group=rec.group if rec else None)

    def _group_accuracy(self, group: str, now: float) -> list[dict[str, Any]]:
        msgs = self.store.telemetry(group=group, since=now - self.config.lookback_s)
        pairs = {((m.model or {}).get("name") or "?", v) for m in msgs if m.feedback for v in m.feedback.accuracy}
        alerts: list[dict[str, Any]] = []
        for model, version in sorted(pairs):
            labelled, correct = accuracy_counts(msgs, model, version)
            ref = self._reference(model, version)
            rep = judge_accuracy("group", group, model, version, labelled, correct, ref.baseline_accuracy() if ref else None, self.config)
            alerts += self._accuracy_transition(rep, group=group)
        return alerts

    def _accuracy_transition(self, rep: AccuracyReport, *, device: str | None = None, group: str | None = None) -> list[dict[str, Any]]:
        if rep.level is Level.NOT_ENOUGH_DATA:
            return []
        scope, name, model, version = rep.scope, rep.name, rep.model, rep.version
        prev = self.store.drift_state(scope, name, model, version).get(ACCURACY)
        prev_level = Level(prev.level) if prev else Level.OK
        now = self.clock()
        bad, was_bad = rep.level.rank >= Level.WARN.rank, prev_level.rank >= Level.WARN.rank
        since = prev.since if prev is not None and bad == was_bad else now
        self.store.set_drift_state(scope, name, model, version, [DriftState(ACCURACY, str(rep.level), since, now, None)])
        base = {"scope": scope, "name": name, "device": device, "group": group, "model": {"name": model, "version": version},
                "collector": self.collector, "ts": round(now, 3), "features": [],
                "accuracy": {"value": rep.accuracy, "baseline": rep.baseline, "labelled": rep.labelled, "correct": rep.correct,
                             "max_drop": self.config.accuracy_max_drop, "upper_bound": rep.upper_bound}}
        if bad and rep.level.rank > prev_level.rank:
            text = f"{name}: model accuracy ({rep.level}) on {model} {version}: {rep.reason}"
            payload = alert_payload(kind="accuracy", level=str(rep.level), since=since, update=None, message=text, **base)
            self.store.add_alert("accuracy", scope, name, model, version, str(rep.level), payload, ts=now)
            return [payload]
        if was_bad and not bad:
            text = f"{name}: model accuracy recovered on {model} {version}: {rep.reason}"
            payload = alert_payload(kind="resolved", level="ok", since=now, update=None, message=text, **base)
            self.store.add_alert("resolved", scope, name, model, version, "ok", payload, ts=now)
            return [payload]
        return []

    def prune(self) -> int:
        return self.store.prune(self.clock() - self.config.retention_s)
