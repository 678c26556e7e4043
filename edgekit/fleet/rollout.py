"""Deploying a release to devices in waves, stopping when too many fail; rolling back.

A rollout is one job id sent to every target device, wave after wave. Each wave waits until its
devices reach a final job state (or the per-device timeout, which counts as TIMED_OUT and sends a
cancel). After a wave, once at least ``min_devices`` devices finished, the share of failures
(FAILED — rolled back on the device —, REJECTED, TIMED_OUT, CANCELED) is compared with
``max_failures``; above it the rollout stops and says so. Devices that succeeded keep the new
version: the operator decides whether to ``edgekit fleet rollback`` them.

The rollout's record (waves, outcomes so far, abort reason) is published retained on
``<prefix>/fleet/rollouts/<job>`` when it starts, after each wave and at the end
(:func:`edgekit.fleet.mqtt.rollout_topic`): the fleet collectors keep it in their store.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from device_agent.contract.manifest import Manifest
from device_agent.contract.protocol import CommandKind, JobState, JobUpdate
from device_agent.ota.job import chunk_plan
from edgekit.errors import FleetError, InputError
from edgekit.fleet.client import DeviceView, FleetClient
from edgekit.fleet.jobs import Release, new_job_id, signed_command
from edgekit.fleet.mqtt import rollout_topic

__all__ = ["Gate", "RolloutPolicy", "RolloutResult", "check_metrics", "deploy", "parse_share", "plan_waves", "rollback", "Journal"]

#: retained chunks held by the broker at once (largest wave × release size) before we ask for HTTP delivery
MQTT_RETAINED_BUDGET = 512 << 20

FINAL = (JobState.SUCCEEDED, JobState.FAILED, JobState.REJECTED, JobState.TIMED_OUT, JobState.CANCELED)
FAILURES = (JobState.FAILED, JobState.REJECTED, JobState.TIMED_OUT, JobState.CANCELED)


def parse_share(text: str, what: str) -> tuple[str, float]:
    """``"20%"`` → ("pct", 20.0); ``"3"`` → ("abs", 3.0). Errors name the option and the value."""
    t = str(text).strip()
    try:
        if t.endswith("%"):
            v = float(t[:-1])
            if not 0 < v <= 100:
                raise ValueError
            return "pct", v
        v = int(t)
        if v < 0:
            raise ValueError
        return "abs", float(v)
    except ValueError:
        raise InputError(f"{what} {text!r} is not a count (e.g. 3) or a percentage in (0, 100] (e.g. 10%)") from None


def plan_waves(devices: list[str], waves: list[str]) -> list[list[str]]:
    """Split ``devices`` into waves. Each entry is the cumulative size after that wave, absolute or
    a share of all devices (``1,10%,50%,100%``); the last wave always reaches every device."""
    n = len(devices)
    sizes = []
    for w in waves:
        kind, v = parse_share(w, "--waves entry")
        sizes.append(min(n, math.ceil(n * v / 100) if kind == "pct" else int(v)))
    if not sizes or sizes[-1] < n:
        sizes.append(n)
    out, done = [], 0
    for s in sizes:
        if s > done:
            out.append(devices[done:s])
            done = s
    return out


@dataclass(frozen=True)
class Gate:
    """Refuse a release whose metrics are worse than the served one's beyond these bounds."""

    max_accuracy_drop: float = 1.0  # percentage points
    max_latency_ratio: float = 1.5


def _primary(m: Manifest, fmt: str | None) -> tuple[str, dict[str, Any]]:
    arts = [a for a in m.artifacts if fmt is None or a.format == fmt] or list(m.artifacts)
    a = arts[0]
    return a.file, m.metrics.get(a.file) or {}


def check_metrics(new: Manifest, old: Manifest, gate: Gate, *, fmt: str | None = None) -> list[str]:
    """Reasons the new release is worse than the old one (empty: it is not)."""
    new_file, nm = _primary(new, fmt)
    old_file, om = _primary(old, fmt)
    problems = []
    for key, label in (("accuracy", "accuracy"), ("agreement", "agreement with its source")):
        if key in nm and key in om:
            drop = float(om[key]) - float(nm[key])
            if drop > gate.max_accuracy_drop:
                problems.append(f"{label} {nm[key]:.2f}% vs {om[key]:.2f}% for the served {old.version} ({-drop:+.2f} pts; "
                                f"bound -{gate.max_accuracy_drop:g})")
            break
    lat = "latency_p50_ms"
    if lat in nm and lat in om and float(om[lat]) > 0:
        ratio = float(nm[lat]) / float(om[lat])
        if ratio > gate.max_latency_ratio:
            problems.append(f"p50 latency {nm[lat]:.3f} ms vs {om[lat]:.3f} ms ({ratio:.2f}x; bound {gate.max_latency_ratio:g}x)")
    return problems


@dataclass(frozen=True)
class RolloutPolicy:
    waves: tuple[str, ...] = ("100%",)
    max_failures: str = "0"
    min_devices: int = 1
    device_timeout_s: float = 900.0
    method: str = "mqtt"
    chunk_size: int = 64 * 1024
    base_url: str | None = None
    probation: dict[str, Any] | None = None
    allow_incompatible: bool = False
    allow_rolled_back: bool = False


@dataclass
class RolloutResult:
    job: str
    model: dict[str, str]
    waves: list[list[str]]
    outcomes: dict[str, dict[str, Any]] = field(default_factory=dict)  # device -> {state, reason, detail, wave}
    aborted: str | None = None
    skipped: list[str] = field(default_factory=list)  # offline / not in a wave that ran

    @property
    def succeeded(self) -> int:
        return sum(1 for o in self.outcomes.values() if o["state"] == "SUCCEEDED")

    @property
    def failed(self) -> int:
        return sum(1 for o in self.outcomes.values() if o["state"] in {str(s) for s in FAILURES})

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "succeeded": self.succeeded, "failed": self.failed}


class Journal:
    """The operator's local record of rollouts and the manifests they shipped (for the metric gate)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def save_manifest(self, m: Manifest, data: bytes) -> None:
        p = self.root / "manifests" / m.name / f"{m.version}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)

    def manifest(self, name: str, version: str) -> Manifest | None:
        p = self.root / "manifests" / name / f"{version}.json"
        if not p.is_file():
            return None
        return Manifest.from_dict(json.loads(p.read_text()), str(p))

    def record(self, result: RolloutResult) -> None:
        p = self.root / "rollouts" / f"{result.job}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps({**result.to_dict(), "ts": time.time()}, indent=1))

    def rollouts(self) -> list[dict[str, Any]]:
        d = self.root / "rollouts"
        if not d.is_dir():
            return []
        return sorted((json.loads(p.read_text()) for p in d.glob("*.json")), key=lambda r: r.get("ts", 0))


def select(views: dict[str, DeviceView], *, devices: list[str] | None, group: str | None) -> tuple[list[str], list[str]]:
    """(online targets, offline targets) for --device/--group; unknown devices are errors."""
    if devices:
        unknown = [d for d in devices if d not in views]
        if unknown:
            known = ", ".join(sorted(views)[:20]) or "none"
            raise FleetError(f"device(s) {', '.join(unknown)} never reported to this broker (known: {known}); check the id and --prefix")
        names = list(devices)
    else:
        names = sorted(d for d, v in views.items() if group is None or v.group == group)
        if not names:
            raise FleetError(f"no device of group {group!r} has reported to this broker" if group else "no device has reported to this broker")
    online = [d for d in names if views[d].online]
    return online, [d for d in names if not views[d].online]


def deploy(fleet: FleetClient, release: Release, *, devices: list[str] | None = None, group: str | None = None,
           policy: RolloutPolicy = RolloutPolicy(), gate: Gate | None = Gate(), baseline: Manifest | None = None,
           journal: Journal | None = None, job: str | None = None, progress: Callable[[str], None] = lambda s: None,
           key: Any = None) -> RolloutResult:
    """Roll ``release`` out. Raises FleetError before sending anything when the metric gate refuses.

    ``key`` (an ed25519 private key) signs every command: the deploy (its target device, expiry and
    job settings) and the cancel sent to devices that exceed the per-device timeout. Without it
    only devices with ``allow_unsigned`` act on them; the others answer REJECTED ``unsigned``.
    """
    fleet.settle(2.0)
    views = fleet.snapshot()
    online, offline = select(views, devices=devices, group=group)
    if not online:
        raise FleetError(f"every target device is offline ({', '.join(offline)}); nothing was sent")
    if gate is not None:
        note = _gate(release, views, online, gate, baseline, journal)
        if note:
            progress(note)
    if journal is not None:
        journal.save_manifest(release.manifest, release.manifest_bytes)
    job = job or new_job_id("deploy")
    waves = plan_waves(online, list(policy.waves))
    peak = release.size * max(len(w) for w in waves)
    if policy.method == "mqtt" and peak > MQTT_RETAINED_BUDGET:
        raise FleetError(f"MQTT delivery would keep {peak / 2**20:,.0f} MiB of retained chunks on the broker at once "
                       f"({release.size / 2**20:,.1f} MiB × {max(len(w) for w in waves)} devices in the largest wave; "
                       f"bound {MQTT_RETAINED_BUDGET >> 20} MiB): use --delivery http --url BASE_URL, or smaller waves")
    result = RolloutResult(job, {"name": release.manifest.name, "version": release.manifest.version}, waves, skipped=list(offline))
    _announce(fleet, result, policy, "running", 0)
    params = release.job_params(method=policy.method, chunk_size=policy.chunk_size, base_url=policy.base_url, probation=policy.probation,
                                allow_incompatible=policy.allow_incompatible, timeout_s=policy.device_timeout_s,
                                allow_rolled_back=policy.allow_rolled_back)
    kind, bound = parse_share(policy.max_failures, "--max-failures")
    count = len(chunk_plan(release.artifacts, policy.chunk_size)) if policy.method == "mqtt" else 0
    for i, wave in enumerate(waves, 1):
        progress(f"wave {i}/{len(waves)}: {len(wave)} device(s)")
        _run_wave(fleet, release, job, params, wave, i, policy, count, result, key)
        finished = len(result.outcomes)
        failed = result.failed
        limit = bound / 100 * finished if kind == "pct" else bound
        progress(f"wave {i}: {sum(1 for d in wave if result.outcomes[d]['state'] == 'SUCCEEDED')}/{len(wave)} succeeded; "
                 f"{failed} failure(s) of {finished} finished")
        if finished >= policy.min_devices and failed > limit:
            rest = [d for w in waves[i:] for d in w]
            result.aborted = (f"aborted after wave {i}: {failed} of {finished} finished devices failed, above --max-failures "
                              f"{policy.max_failures}; {len(rest)} device(s) in later waves were not updated")
            result.skipped += rest
            break
        _announce(fleet, result, policy, "running", i)
    fleet.flush([_announce(fleet, result, policy, "aborted" if result.aborted else "done", len(waves))])
    if journal is not None:
        journal.record(result)
    return result


def _announce(fleet: FleetClient, result: RolloutResult, policy: RolloutPolicy, status: str, wave: int) -> Any:
    """Publish the rollout's record (retained) for the collectors' store; returns paho's message info."""
    doc = {"v": 1, "type": "rollout", **result.to_dict(), "status": status, "wave": wave, "ts": round(time.time(), 3),
           "policy": {"waves": list(policy.waves), "max_failures": policy.max_failures, "min_devices": policy.min_devices,
                      "device_timeout_s": policy.device_timeout_s, "method": policy.method}}
    return fleet.publish(rollout_topic(result.job, fleet.prefix), json.dumps(doc).encode(), retain=True)


def _gate(release: Release, views: dict[str, DeviceView], online: list[str], gate: Gate, baseline: Manifest | None,
          journal: Journal | None) -> str | None:
    """Raise when the release is worse than the served version; return a note when it cannot tell."""
    if baseline is None:
        served = Counter((views[d].model_name, views[d].version) for d in online if views[d].version)
        if not served:
            return None
        (name, version), _ = served.most_common(1)[0]
        baseline = journal.manifest(name or "", version or "") if journal is not None else None
        if baseline is None:
            return (f"metric gate: no manifest recorded for the served {name} {version} (it was not shipped from this state dir); "
                    "pass --baseline DIR to compare")
        if baseline.name != release.manifest.name:
            return None  # a different model replaces this one: nothing comparable
    if baseline.version == release.manifest.version:
        return None
    problems = check_metrics(release.manifest, baseline, gate)
    if problems:
        raise FleetError(f"refusing to deploy {release.manifest.name} {release.manifest.version}: its metrics are worse than "
                       f"{baseline.version}'s: {'; '.join(problems)}. Validate before replacing production, or pass --force")
    return None


def _run_wave(fleet: FleetClient, release: Release, job: str, params: dict[str, Any], wave: list[str], index: int,
              policy: RolloutPolicy, count: int, result: RolloutResult, key: Any = None) -> None:
    infos = []
    for d in wave:
        if policy.method == "mqtt":
            infos += fleet.publish_chunks(d, job, release.chunks(job, policy.chunk_size))
        infos.append(fleet.send(d, signed_command(CommandKind.DEPLOY, job, device=d, params=params, key=key)))
    fleet.flush(infos, timeout=max(30.0, policy.device_timeout_s))

    def done(views: dict[str, DeviceView]) -> bool:
        return all(_final(views.get(d), job) for d in wave)

    fleet.wait_for(done, policy.device_timeout_s + 5.0)
    views = fleet.snapshot()
    cleanup = []
    for d in wave:
        u = _final(views.get(d), job)
        if u is None:
            result.outcomes[d] = {"state": "TIMED_OUT", "reason": "fleet_timeout", "wave": index,
                                  "detail": f"no final job state within {policy.device_timeout_s:g} s; a cancel was sent"}
            cleanup.append(fleet.send(d, signed_command(CommandKind.CANCEL, f"{job}-cancel", device=d, params={"target": job}, key=key)))
        else:
            result.outcomes[d] = {"state": str(u.state), "reason": u.reason, "detail": u.detail, "wave": index}
        if count:
            cleanup += fleet.clear_chunks(d, job, count)
    fleet.flush(cleanup, timeout=30.0)


def _final(view: DeviceView | None, job: str) -> JobUpdate | None:
    if view is None:
        return None
    u = view.jobs.get(job)
    return u if u is not None and u.state in FINAL else None


def rollback(fleet: FleetClient, *, key: Any, devices: list[str] | None = None, group: str | None = None, to: str | None = None,
             timeout_s: float = 60.0, job: str | None = None) -> dict[str, dict[str, Any]]:
    """Send a signed rollback to devices (or a group) and wait for their final job states."""
    fleet.settle(2.0)
    views = fleet.snapshot()
    online, offline = select(views, devices=devices, group=group)
    job = job or new_job_id("rollback")
    params = {"to": to} if to else {}
    infos = [fleet.send(d, signed_command(CommandKind.ROLLBACK, job, device=d, params=params, key=key)) for d in online]
    fleet.flush(infos)
    fleet.wait_for(lambda v: all(_final(v.get(d), job) for d in online), timeout_s)
    views = fleet.snapshot()
    out: dict[str, dict[str, Any]] = {}
    for d in online:
        u = _final(views.get(d), job)
        out[d] = {"state": str(u.state), "reason": u.reason, "detail": u.detail, "version": views[d].version} if u else \
            {"state": "TIMED_OUT", "reason": "fleet_timeout", "detail": f"no answer within {timeout_s:g} s", "version": views[d].version}
    for d in offline:
        out[d] = {"state": "SKIPPED", "reason": "offline", "detail": "offline: nothing sent", "version": views[d].version}
    return out
