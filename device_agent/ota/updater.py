"""The updater: what the daemon holds to take over-the-air updates for one device.

It wires the room together — the :class:`~device_agent.ota.runner.Runner` (the update thread and
its one :meth:`~device_agent.ota.runner.Runner.move`), the :class:`~device_agent.ota.inbox.CommandInbox`
(commands from the MQTT thread) and the state actions of :mod:`device_agent.ota.states` — and
offers the device's side: :meth:`Updater.boot` recovers after any start, clean or not;
:meth:`Updater.observe` hears every request (cheap, never raises); :meth:`Updater.on_chunk` takes
artifact chunks; :meth:`Updater.status` is the ``ota`` section of ``GET /healthz``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from device_agent.contract.errors import OtaError
from device_agent.contract.protocol import Command
from device_agent.contract.types import Feeds, JsonDict
from device_agent.ota.gate import CommandGate, Identity
from device_agent.ota.inbox import CommandInbox
from device_agent.ota.machine import Event, OtaState
from device_agent.ota.probation import Verdict
from device_agent.ota.record import OtaRecord, legacy_seen
from device_agent.ota.replay import ReplayRecord
from device_agent.ota.runner import Loader, Runner, Stop
from device_agent.ota.seams import JobReport, OtaSettings, Transport
from device_agent.ota.states import ACTIONS
from device_agent.ota.store import ModelStore
from device_agent.ota.verify import TrustedKeys
from device_agent.runtime.model import LoadedModel

__all__ = ["REPLAY_NAME", "Updater"]

#: the replay record's file, beside ota.json
REPLAY_NAME = "replay.sqlite"

log = logging.getLogger("edgekit.agent.ota")


class Updater:
    """Runs update jobs for one device.

    Args:
        store: the model slots.
        state_file: where the state machine persists itself (``<state_dir>/ota.json``); the replay record of
            accepted commands lives beside it (``replay.sqlite``).
        trusted: keys whose signatures are accepted (and whether unsigned updates are).
        identity: this device's id and group (commands for others are refused).
        get_model / swap: the serving seam (``ServingModel.get``/``.swap``, or the agent's).
        loader: loads a model directory (``device_agent.runtime.model.load_model`` with the agent's options).
        report: receives every :class:`JobReport` (the daemon queues it in its outbox).
        transport: subscribes chunk topics; ``chunk_filter(job)`` names them.
    """

    def __init__(self, store: ModelStore, state_file: str | Path, *, trusted: TrustedKeys, loader: Loader, identity: Identity,
                 get_model: Callable[[], LoadedModel | None] = lambda: None,
                 swap: Callable[[LoadedModel], LoadedModel | None] = lambda m: None,
                 report: Callable[[JobReport], None] = lambda r: None,
                 settings: OtaSettings | None = None, transport: Transport | None = None,
                 chunk_filter: Callable[[str], str] | None = None, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.state_file = Path(state_file)
        self.settings = settings or OtaSettings()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.runner = Runner(store, self.state_file, ACTIONS, trusted=trusted, loader=loader, settings=self.settings, stop=self._stop,
                             wake=self._wake, clock=clock)
        self.replay = ReplayRecord(self.state_file.with_name(REPLAY_NAME))
        for job, digest in legacy_seen(self.state_file).items():  # an ota.json from before the replay record: keep its ids single-use
            if self.replay.digest(job) is None:
                self.replay.add(job, f"v1:{digest}", kind="", expires=0.0)
        self.inbox = CommandInbox(self.runner, CommandGate(trusted, identity, self.replay, clock=clock))
        self.attach(get_model=get_model, swap=swap, report=report, transport=transport, chunk_filter=chunk_filter)

    def attach(self, *, get_model: Callable[[], LoadedModel | None], swap: Callable[[LoadedModel], LoadedModel | None],
               report: Callable[[JobReport], None], transport: Transport | None = None,
               chunk_filter: Callable[[str], str] | None = None) -> None:
        """Connect the serving seam once the served model is loaded (after :meth:`boot`)."""
        r = self.runner
        r.get_model, r.swap, r.report = get_model, swap, report
        if transport is not None:
            r.transport, r.chunk_filter = transport, chunk_filter

    # --- what the device reads -------------------------------------------------------------------

    @property
    def state(self) -> OtaState:
        return self.runner.state

    @property
    def record(self) -> OtaRecord:
        """What ``ota.json`` holds now."""
        return self.runner.record

    @property
    def loader(self) -> Loader:
        return self.runner.loader

    @property
    def last_verdict(self) -> Verdict | None:
        return self.runner.last_verdict

    @property
    def last_rollback_s(self) -> float | None:
        """Seconds from the last failed probation check to the previous model serving again."""
        return self.runner.last_rollback_s

    def status(self) -> JsonDict:
        """The ``ota`` section of ``GET /healthz``."""
        rec = self.runner.record
        out: JsonDict = {"state": str(rec.state), "job": rec.job.id if rec.job else None, "reason": rec.reason, "detail": rec.detail,
                         "queue": [q.id for q in rec.queue], "current": self.store.current, "previous": self.store.previous,
                         "history": [h.to_dict() for h in rec.history[-5:]]}
        probation = self.runner.probation
        if probation is not None:
            out["progress"] = probation.progress()
        receiver = self.runner.receiver
        if receiver is not None:
            out["progress"] = "chunks: {}/{}".format(*receiver.progress)
        return out

    # --- lifecycle -------------------------------------------------------------------------------

    def boot(self) -> Path | None:
        """Recover the store and the state machine after a start (clean or not).

        Call before loading the model to serve; returns the directory to serve (``store.current``).
        Counts a crash when the last run died on probation, and rolls back at ``max_crashes``.
        """
        r = self.runner
        rec = r.record
        keep = [rec.job.id] if rec.job is not None and rec.state in (OtaState.DOWNLOADING, OtaState.VERIFYING) else []
        for repaired in self.store.recover(keep_incoming=keep).repaired:
            log.warning("OTA: store: %s", repaired)
        if rec.state == OtaState.PROBATION:
            self._count_crash(rec)
        if r.state == OtaState.ROLLED_BACK:
            r.ensure_current(r.record.target)
        r.update(clean_shutdown=False)
        return self.store.current_path()

    def _count_crash(self, rec: OtaRecord) -> None:
        r = self.runner
        crashes = rec.crashes + (0 if rec.clean_shutdown else 1)
        policy = r.policy()
        r.update(crashes=crashes, clean_shutdown=False)
        if crashes >= policy.max_crashes:
            r.move(Event.FAIL, reason="crash_loop", target=rec.from_slot,
                   detail=f"the agent restarted {crashes} times while the update was on probation (bound {policy.max_crashes})")
        elif rec.to_slot is not None and self.store.current != rec.to_slot:
            if r.installed(rec.to_slot):
                self.store.activate(rec.to_slot)  # the pointer flip of the swap was lost
            else:  # the new version vanished from disk (not something an update does): go back
                r.move(Event.FAIL, reason="store", target=rec.from_slot,
                       detail=f"version {rec.to_slot} is no longer installed; serving {self.store.current}")

    def start(self) -> None:
        """Start the updater thread (after the served model is loaded)."""
        self._thread = threading.Thread(target=self._run, name="edgekit-ota", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread; marks a clean shutdown so a probation restart is not counted as a crash."""
        self._stop.set()
        self._wake.set()
        shadow = self.runner.shadow
        if shadow is not None:
            shadow.stop()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.runner.update(clean_shutdown=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.runner.step()
            except Stop:
                break

    # --- the request path and the MQTT thread ----------------------------------------------------

    def observe(self, model: LoadedModel, inputs: Feeds | None, outputs: Feeds | None, latency_s: float | None,
                error: str | None = None) -> None:
        """Called after every prediction (``error``: a runtime failure kind). Cheap; never raises."""
        r = self.runner
        try:
            pr = r.probation
            if pr is not None and model is r.candidate:
                pr.observe(outputs, latency_s, error, inputs)
                return
            sh = r.shadow
            if sh is not None and inputs is not None and outputs is not None:
                sh.observe(inputs, outputs)
        except Exception:  # the request path must never fail because of the updater
            log.exception("OTA: observe failed")

    def handle(self, cmd: Command) -> None:
        """Take a deploy / rollback / cancel command (MQTT thread). Long work happens on the updater thread."""
        self.inbox.handle(cmd)

    def on_chunk(self, topic: str, payload: bytes) -> None:
        """An artifact chunk from ``<prefix>/<device>/ota/<job>/chunk/<n>`` (MQTT thread)."""
        parts = topic.rsplit("/", 4)
        if len(parts) != 5 or parts[1] != "ota" or parts[3] != "chunk" or not parts[4].isdigit():
            return
        job, n = parts[2], int(parts[4])
        receiver = self.runner.receiver
        if receiver is None or receiver.job != job:
            return  # a retained chunk of a finished job, or of one not started yet (it is replayed on subscribe)
        try:
            receiver.add(n, payload)
        except OtaError as e:
            log.warning("OTA: job %s: %s", job, e)
