"""The transition table, job-state mapping, persistence before each move, and the probation/shadow judges."""

from __future__ import annotations

import json

import numpy as np
import pytest

from device_agent.contract.protocol import CommandKind, JobState
from device_agent.ota import ACTIVE, FINAL, TRANSITIONS, Event, OtaState, job_state
from device_agent.ota.gate import Identity
from device_agent.ota.job import ProbationPolicy
from device_agent.ota.probation import Probation, Shadow
from device_agent.ota.record import QueuedJob
from device_agent.ota.states import ACTIONS
from device_agent.ota.store import ModelStore
from device_agent.ota.updater import Updater
from device_agent.ota.verify import TrustedKeys
from tests.ota.harness import wait_until

S = OtaState


def updater(tmp_path) -> Updater:
    return Updater(ModelStore(tmp_path / "m"), tmp_path / "ota.json", trusted=TrustedKeys({}), loader=lambda p: None,
                   identity=Identity("dev"))


def test_every_state_has_an_action_and_is_reachable():
    assert set(ACTIONS) == set(OtaState) and all(a.state == s for s, a in ACTIONS.items())
    targets = {dst for dst in TRANSITIONS.values()}
    assert targets | {S.IDLE} == set(OtaState)


def test_failure_ends_are_where_the_issue_says():
    # REJECTED (never served): from every state before the swap; ROLLED_BACK (served, then reverted): from probation only,
    # or from IDLE for an explicit rollback command
    assert {src for (src, e), dst in TRANSITIONS.items() if dst == S.REJECTED} == {S.IDLE, S.DOWNLOADING, S.VERIFYING, S.STAGED, S.SHADOW}
    assert {src for (src, e), dst in TRANSITIONS.items() if dst == S.ROLLED_BACK} == {S.PROBATION, S.IDLE}
    assert {(src, e) for (src, e), dst in TRANSITIONS.items() if dst == S.COMMITTED} == {(S.PROBATION, Event.PASS), (S.IDLE, Event.PASS)}
    for f in FINAL:
        assert [(e, dst) for (src, e), dst in TRANSITIONS.items() if src == f] == [(Event.DONE, S.IDLE)]


@pytest.mark.parametrize(("state", "reason", "kind", "want"), [
    (S.DOWNLOADING, "", "deploy", JobState.IN_PROGRESS),
    (S.PROBATION, "", "deploy", JobState.IN_PROGRESS),
    (S.COMMITTED, "passed", "deploy", JobState.SUCCEEDED),
    (S.REJECTED, "bad_signature", "deploy", JobState.REJECTED),
    (S.REJECTED, "timeout", "deploy", JobState.TIMED_OUT),
    (S.REJECTED, "canceled", "deploy", JobState.CANCELED),
    (S.ROLLED_BACK, "nan_outputs", "deploy", JobState.FAILED),
    (S.ROLLED_BACK, "canceled", "deploy", JobState.CANCELED),
    (S.ROLLED_BACK, "manual_rollback", "rollback", JobState.SUCCEEDED),
])
def test_job_states(state, reason, kind, want):
    assert job_state(state, reason, kind) == want
    assert (state in ACTIVE) == (want == JobState.IN_PROGRESS)


def test_state_is_on_disk_before_the_move_returns(tmp_path):
    u = updater(tmp_path)
    u.runner.record = u.record.changed(job=QueuedJob("j1", CommandKind.DEPLOY, 1.0, "dev", {}))
    assert u.runner.move(Event.START, detail="x") == S.DOWNLOADING
    assert json.loads((tmp_path / "ota.json").read_text())["state"] == "DOWNLOADING"
    assert not (tmp_path / "ota.json.tmp").exists()
    with pytest.raises(RuntimeError, match="no transition from DOWNLOADING on pass"):
        u.runner.move(Event.PASS)
    assert json.loads((tmp_path / "ota.json").read_text())["state"] == "DOWNLOADING"  # a refused move changes nothing


def out(v: float) -> dict[str, np.ndarray]:
    return {"y": np.array([[v, 0.0]], np.float32)}


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_probation_verdicts():
    p = ProbationPolicy(requests=50, seconds=60, min_requests=10, max_error_rate=0.1, max_latency_ratio=3, latency_floor_ms=0.5)
    pr = Probation(p, judge=None, started=0)
    pr.observe(out(float("nan")), 0.001, None)
    assert (pr.verdict.passed, pr.verdict.reason) == (False, "nan_outputs")

    pr = Probation(p, judge=None, started=0)
    for i in range(20):
        pr.observe(None if i % 4 == 0 else out(1), 0.001, "runtime" if i % 4 == 0 else None)
    assert pr.verdict.reason == "error_rate" and "30.0% over 10 requests exceeds 10.0%" in pr.verdict.detail  # decided at min_requests

    pr = Probation(p, judge=None, started=0)
    for _ in range(50):
        pr.observe(out(1), 0.5, None)  # live latency alone never fails probation: the judge compares in pairs (test_latency.py)
    assert (pr.verdict.passed, pr.verdict.reason) == (True, "passed")
    assert "latency not judged (no previous model to compare with)" in pr.verdict.detail


def test_probation_passes_when_its_time_is_up_without_traffic():
    clock = Clock()
    pr = Probation(ProbationPolicy(requests=1000, seconds=30), judge=None, started=clock.t, clock=clock)
    pr.tick()
    assert pr.verdict is None
    clock.t += 31
    pr.tick()
    assert pr.verdict.passed and "0 requests" in pr.verdict.detail


class Fixed:
    def __init__(self, cls: int) -> None:
        self.cls = cls

    def run(self, feeds):
        y = np.zeros((1, 3), np.float32)
        y[0, self.cls] = 1
        return {"y": y}


@pytest.mark.parametrize(("cls", "passed", "reason"), [(0, True, "passed"), (2, False, "shadow_disagreement")])
def test_shadow_compares_top1(cls, passed, reason):
    p = ProbationPolicy(shadow=True, shadow_sample=1.0, shadow_requests=10, shadow_min_agreement=0.9)
    sh = Shadow(Fixed(cls), p, started=0, seed=0)
    try:
        served = {"y": np.array([[1.0, 0.0, 0.0]], np.float32)}
        for _ in range(30):
            sh.observe({"x": np.zeros((1, 2), np.float32)}, served)
            if sh.decided.wait(0.01):
                break
        assert wait_until(lambda: sh.verdict is not None, 5)
        assert (sh.verdict.passed, sh.verdict.reason) == (passed, reason)
        assert "top-1 agreement" in sh.verdict.detail
    finally:
        sh.stop()


def test_shadow_without_traffic_promotes_on_the_self_test_when_time_is_up():
    clock = Clock()
    sh = Shadow(Fixed(0), ProbationPolicy(shadow=True, shadow_seconds=10), started=clock.t, clock=clock)
    try:
        clock.t += 11
        sh.tick()
        assert sh.verdict.passed and "no live traffic" in sh.verdict.detail
    finally:
        sh.stop()
