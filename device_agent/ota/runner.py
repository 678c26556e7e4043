"""The runner: the update thread's loop and the one way the OTA state changes.

:meth:`Runner.move` looks the move up in :data:`device_agent.ota.machine.TRANSITIONS`, saves the
*target* state in ``ota.json`` and only then returns, so the caller's next step — and after a crash,
the target state's action, run again — always finds the state it acts in on disk (mender's
"state saved before entering"). Each state's action (:mod:`device_agent.ota.states`) is one
:class:`StateAction`; :meth:`Runner.step` runs the one of the current state. Actions are
idempotent, which is what makes re-running one after a restart safe.

Threads: the runner's state is read by the request path (``observe``) and the MQTT thread
(commands, chunks) without blocking; everything slow runs on the update thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from device_agent.contract.errors import AgentError, OtaError
from device_agent.contract.manifest import MANIFEST_NAME, ManifestError, load_manifest
from device_agent.ota.delivery import ChunkReceiver
from device_agent.ota.faults import crashpoint
from device_agent.ota.job import DeployJob, ProbationPolicy, parse_job
from device_agent.ota.machine import ACTIVE, FINAL, TRANSITIONS, Event, OtaState, job_state
from device_agent.ota.probation import Probation, Shadow, Verdict
from device_agent.ota.record import OtaRecord, QueuedJob, RecordChanges, load_record, save_record
from device_agent.ota.seams import JobReport, OtaSettings, Transport, model_ref
from device_agent.ota.store import ModelStore, slot_name
from device_agent.ota.verify import TrustedKeys
from device_agent.runtime.model import LoadedModel

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["Loader", "Runner", "StateAction", "Stop"]

log = logging.getLogger("edgekit.agent.ota")

#: loads a model directory from the store (``load_model`` with the agent's options)
Loader = Callable[[Path], LoadedModel]


class Stop(Exception):
    """The updater is stopping: unwinds the action that was waiting."""


class StateAction(Protocol):
    """What to do in one state. Runs on the update thread; ends by moving on, or returns to run again."""

    state: OtaState

    def run(self, r: Runner) -> None: ...


class Runner:
    """Runs update jobs for one device: the persisted record, the models in play, the waits.

    Args:
        store: the model slots.
        state_file: where the record lives (``<state_dir>/ota.json``).
        actions: one :class:`StateAction` per state.
        trusted: keys whose signatures are accepted (and whether unsigned updates are).
        loader: loads a model directory.
        settings: the device's ``[ota]`` settings.
        stop / wake: set to stop the thread / to wake an idle one (a command arrived).
    """

    def __init__(self, store: ModelStore, state_file: Path, actions: Mapping[OtaState, StateAction], *, trusted: TrustedKeys,
                 loader: Loader, settings: OtaSettings, stop: threading.Event, wake: threading.Event,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.state_file = state_file
        self.actions = actions
        self.trusted = trusted
        self.loader = loader
        self.settings = settings
        self.stop = stop
        self.wake = wake
        self.clock = clock
        # the serving seam (Updater.attach connects it once the served model is loaded)
        self.get_model: Callable[[], LoadedModel | None] = lambda: None
        self.swap: Callable[[LoadedModel], LoadedModel | None] = lambda m: None
        self.report: Callable[[JobReport], None] = lambda r: None
        self.transport: Transport | None = None
        self.chunk_filter: Callable[[str], str] | None = None
        self.record = load_record(state_file)
        self.lock = threading.RLock()
        self.cancel: str | None = None  # reason to abort the active job ("canceled" / "rollback")
        self.job: DeployJob | None = None  # the running job, parsed
        self.candidate: LoadedModel | None = None
        self.candidate_slot: str | None = None
        self.incumbent: LoadedModel | None = None  # the model a rollback swaps back in
        self.receiver: ChunkReceiver | None = None  # chunks of the download in progress
        self.probation: Probation | None = None
        self.shadow: Shadow | None = None
        self.last_verdict: Verdict | None = None
        self.last_rollback_s: float | None = None  # failed probation check → previous model served

    # --- the record ------------------------------------------------------------------------------

    @property
    def state(self) -> OtaState:
        return self.record.state

    def save(self, record: OtaRecord) -> None:
        """Persist ``record``, then make it the current one."""
        save_record(self.state_file, record)
        self.record = record

    def update(self, **changes: Unpack[RecordChanges]) -> None:
        """Persist a change that is not a move (the queue, crash counts, the clean-shutdown mark)."""
        with self.lock:
            self.save(self.record.changed(**changes))

    def move(self, event: Event, **changes: Unpack[RecordChanges]) -> OtaState:
        """The one way the state changes: look up the table, persist the target, then report."""
        with self.lock:
            src = self.state
            dst = TRANSITIONS.get((src, event))
            if dst is None:
                raise RuntimeError(f"OTA: no transition from {src} on {event}")  # a bug in this room, not bad input
            crashpoint(f"move.{src}.{event}")
            rec = self.record.changed(**changes).changed(state=dst, since=round(self.clock(), 3))
            if dst == OtaState.IDLE:
                rec = rec.changed(job=None, reason="", detail="", from_slot=None, to_slot=None, target=None, crashes=0)
            elif dst == OtaState.ROLLED_BACK:
                rec = self._reverted(rec, src)
            elif dst == OtaState.COMMITTED and rec.to_slot:
                rec = rec.unrevert(rec.to_slot)  # deployed again with the signed override, and it held this time
            self.save(rec)
            crashpoint(f"moved.{dst}")
        log.info("OTA: %s --%s--> %s %s", src, event, dst, changes.get("detail", ""))
        if dst in ACTIVE:
            self.report_state()  # final states are reported by finish(), once their action (revert, swap, clean-up) is done
        return dst

    def _reverted(self, rec: OtaRecord, src: OtaState) -> OtaRecord:
        """``rec`` remembering the release this rollback reverts: the update on probation, or (a manual
        rollback) the version served until now. Redeploying it then needs a signed override."""
        slot = rec.to_slot if src == OtaState.PROBATION else (rec.from_slot if rec.from_slot != rec.target else None)
        if not slot:
            return rec
        job = self.job
        if job is not None and slot_name(job.version) == slot:
            name = job.name
        else:
            try:
                name = load_manifest(self.store.path(slot)).name
            except ManifestError:  # gone from disk: remember the version alone
                name = ""
        return rec.revert(name, slot, rec.reason, round(self.clock(), 3))

    def report_state(self) -> None:
        """Tell the fleet the running job's state (IN_PROGRESS while active; the outcome when final)."""
        rec = self.record
        if rec.job is None:
            return
        st = rec.state
        self.report(JobReport(job=rec.job.id, state=job_state(st, rec.reason, str(rec.job.kind)),
                              reason=rec.reason if st in FINAL else "", detail=rec.detail, ota_state=str(st),
                              model=model_ref(self.get_model())))

    # --- the loop --------------------------------------------------------------------------------

    def step(self) -> None:
        """Run the current state's action once; an error ends the active job safely. Raises Stop when stopping."""
        st = self.state
        try:
            self.actions[st].run(self)
        except Stop:
            raise
        except OtaError as e:
            self.fail_active(e.reason, str(e))
        except Exception as e:  # a bug or an environment failure: end the job safely, keep serving
            log.exception("OTA: %s failed", st)
            self.fail_active("internal", f"{type(e).__name__}: {e}")
            self.stop.wait(0.5)

    def fail_active(self, reason: str, detail: str) -> None:
        st = self.state
        if st in FINAL:  # the job's outcome stands; move on rather than retry a failing clean-up forever
            log.error("OTA: clean-up after %s failed (%s: %s); continuing", st, reason, detail)
            try:
                self.finish()
            except Exception:
                log.exception("OTA: cannot leave %s", st)
                self.stop.wait(5.0)
            return
        if st == OtaState.PROBATION:
            self.move(Event.FAIL, reason=reason, detail=detail, target=self.record.from_slot)
        elif (st, Event.REJECT) in TRANSITIONS:
            self.move(Event.REJECT, reason=reason, detail=detail)
        else:
            log.error("OTA: %s in %s: %s", reason, st, detail)

    def wait(self, event: threading.Event, seconds: float, tick: Callable[[], None] | None = None) -> bool:
        """Wait for ``event`` up to ``seconds``, bounded, waking every 50 ms for stop/cancel/tick."""
        deadline = time.monotonic() + max(0.0, seconds)
        while not event.is_set():
            if self.stop.is_set():
                raise Stop
            if self.cancel is not None:
                return False
            if tick is not None:
                tick()
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            event.wait(min(0.05, left))
        return True

    # --- the job and its models ------------------------------------------------------------------

    def deploy_job(self, entry: QueuedJob | None = None) -> DeployJob:
        """The running (or given) deploy job, parsed once."""
        entry = entry or self.record.job
        if entry is None:
            raise RuntimeError(f"OTA: no job in {self.state}")  # a bug: active states always have one
        if self.job is None or self.job.id != entry.id:
            self.job = parse_job(entry.id, entry.params, defaults=self.settings.probation, limits=self.settings.limits)
        return self.job

    def policy(self) -> ProbationPolicy:
        """The running job's probation policy (the device's defaults if the job's does not parse)."""
        entry = self.record.job
        try:
            return self.settings.probation.merged(entry.params.get("probation") if entry else None)
        except OtaError:
            return self.settings.probation

    def to_slot(self) -> str:
        slot = self.record.to_slot
        if slot is None:
            raise RuntimeError(f"OTA: no target version in {self.state}")  # a bug: set by the VERIFIED move
        return slot

    def load_candidate(self) -> LoadedModel:
        """The new model, loaded beside the served one (once) and self-tested."""
        slot = self.to_slot()
        if self.candidate is not None and self.candidate_slot == slot:
            return self.candidate
        try:
            cand = self.loader(self.store.path(slot))
        except AgentError as e:
            raise OtaError(f"the new model does not load on this device: {e}", reason="load_failed") from None
        if cand.runtime_check.refused:  # checked before the promotion: the served model stays
            raise OtaError(f"the new model was validated with another runtime: {cand.runtime_check.detail}", reason="runtime_mismatch")
        if not cand.selftest.passed:
            raise OtaError(f"the new model failed its self-test on this device: {cand.selftest.detail}", reason="selftest_failed")
        self.candidate, self.candidate_slot = cand, slot
        return cand

    def installed(self, slot: str | None) -> bool:
        return bool(slot) and (self.store.path(str(slot)) / MANIFEST_NAME).is_file()

    def ensure_current(self, target: str | None) -> None:
        """Point ``current`` at ``target`` again (an installed version) if it does not already."""
        if target and self.store.current != target and self.installed(target):
            self.store.revert(to=target)

    def clear_models(self) -> None:
        self.candidate = None
        self.candidate_slot = None
        self.incumbent = None
        self.job = None
        self.cancel = None

    def finish(self) -> None:
        """End the job: clean the store, record and report the outcome, go back to IDLE."""
        try:
            self.store.gc()  # versions beyond the newest `keep`, and rejected/reverted ones, leave the disk
        except OSError as e:
            log.warning("OTA: removing old versions failed: %s", e)
        with self.lock:
            self.save(self.record.finished(round(self.clock(), 3)))
            self.report_state()  # after a crash before DONE this runs again: the fleet may see the final state twice
            self.move(Event.DONE)
