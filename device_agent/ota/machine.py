"""Over-the-air model updates: one state machine, one transition table, state on disk before each move.

::

    IDLE ──START──▶ DOWNLOADING ──DOWNLOADED──▶ VERIFYING ──VERIFIED──▶ STAGED ──SWAP──▶ PROBATION ──PASS──▶ COMMITTED
      │                  │                          │                    │  └SHADOW▶ SHADOW ─SWAP┘  │
      └──────────────────┴──────── REJECT ──────────┴────────────────────┴────────────┘          FAIL / ROLLBACK
                                     ▼                                                            ▼
                                 REJECTED (never served)                              ROLLED_BACK (served, then reverted)

    IDLE ──ROLLBACK──▶ ROLLED_BACK  (a manual, signed rollback command)
    COMMITTED / REJECTED / ROLLED_BACK ──DONE──▶ IDLE  (after the job's final state is reported)

The table and the states live here; :class:`device_agent.ota.runner.Runner` runs them (one action
per state, :mod:`device_agent.ota.states`) and :class:`device_agent.ota.updater.Updater` is what the
daemon holds.

How it survives kill -9 and power cuts: :meth:`Runner.move` writes the *target* state to
``ota.json`` (an :class:`~device_agent.ota.record.OtaRecord`; tmp + fsync + rename + dir fsync)
before the state's action runs, and every action is idempotent, so after a restart
:meth:`Updater.boot` re-enters the persisted state and runs its action again: a download resumes, verification re-checks, a probation whose pointer flip was lost
flips it, a rollback whose revert was lost reverts. The agent serves whatever ``store.current``
names after :meth:`boot` — always an installed, verified version.

Crash loops: every boot that finds PROBATION without a clean shutdown counts one crash (in
``ota.json``); at ``max_crashes`` the update is rolled back before the new model is even loaded.

Job states reported to the fleet (``JobState``): QUEUED, IN_PROGRESS, then SUCCEEDED (committed, or a
manual rollback done), REJECTED (refused before serving), FAILED (rolled back after serving),
TIMED_OUT, CANCELED — each with a machine-readable ``reason`` and a sentence in ``detail``. A final
state is reported once its action is done (a ROLLED_BACK job is reported after the old model serves
again), so a fleet that sees FAILED knows the device is back on its previous version.
"""

from __future__ import annotations

from device_agent.contract.enums import JobState, StrEnum

__all__ = ["ACTIVE", "FINAL", "TRANSITIONS", "Event", "OtaState", "job_state"]


class OtaState(StrEnum):
    IDLE = "IDLE"
    DOWNLOADING = "DOWNLOADING"
    VERIFYING = "VERIFYING"
    STAGED = "STAGED"
    SHADOW = "SHADOW"
    PROBATION = "PROBATION"
    COMMITTED = "COMMITTED"
    REJECTED = "REJECTED"
    ROLLED_BACK = "ROLLED_BACK"


class Event(StrEnum):
    START = "start"
    DOWNLOADED = "downloaded"
    VERIFIED = "verified"
    SHADOW = "shadow"
    SWAP = "swap"
    PASS = "pass"
    FAIL = "fail"
    REJECT = "reject"
    ROLLBACK = "rollback"
    DONE = "done"


S, E = OtaState, Event
#: (state, event) -> next state. The only place the update's control flow is defined.
TRANSITIONS: dict[tuple[OtaState, Event], OtaState] = {
    (S.IDLE, E.START): S.DOWNLOADING,
    (S.IDLE, E.PASS): S.COMMITTED,  # deploy of the version already served: nothing to do
    (S.IDLE, E.REJECT): S.REJECTED,  # refused on arrival: signature, key, version, job document
    (S.IDLE, E.ROLLBACK): S.ROLLED_BACK,  # manual rollback
    (S.DOWNLOADING, E.DOWNLOADED): S.VERIFYING,
    (S.DOWNLOADING, E.REJECT): S.REJECTED,
    (S.VERIFYING, E.VERIFIED): S.STAGED,
    (S.VERIFYING, E.REJECT): S.REJECTED,
    (S.STAGED, E.SHADOW): S.SHADOW,
    (S.STAGED, E.SWAP): S.PROBATION,
    (S.STAGED, E.REJECT): S.REJECTED,
    (S.SHADOW, E.SWAP): S.PROBATION,
    (S.SHADOW, E.REJECT): S.REJECTED,
    (S.PROBATION, E.PASS): S.COMMITTED,
    (S.PROBATION, E.FAIL): S.ROLLED_BACK,
    (S.PROBATION, E.ROLLBACK): S.ROLLED_BACK,
    (S.COMMITTED, E.DONE): S.IDLE,
    (S.REJECTED, E.DONE): S.IDLE,
    (S.ROLLED_BACK, E.DONE): S.IDLE,
}
FINAL = (S.COMMITTED, S.REJECTED, S.ROLLED_BACK)
ACTIVE = (S.DOWNLOADING, S.VERIFYING, S.STAGED, S.SHADOW, S.PROBATION)


def job_state(state: OtaState, reason: str, kind: str = "deploy") -> JobState:
    """The fleet-facing job state for an OTA state and its reason."""
    if state in ACTIVE:
        return JobState.IN_PROGRESS
    if state == S.COMMITTED:
        return JobState.SUCCEEDED
    if reason == "canceled":
        return JobState.CANCELED
    if reason == "timeout":
        return JobState.TIMED_OUT
    if state == S.ROLLED_BACK:
        return JobState.SUCCEEDED if kind == "rollback" else JobState.FAILED
    return JobState.REJECTED
