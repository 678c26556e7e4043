"""The command inbox: deploy, rollback and cancel commands in, checked, queued or refused at once.

Runs on the MQTT thread, so it is quick: it checks, records, reports and wakes the update
thread; nothing slow happens here.

- **Gate** (:mod:`device_agent.ota.gate`): signature, target, validity window and the replay record.
  A command refused there changes nothing and its answer is not retained (``JobReport.record`` False).
- **Once**: a command that passed is written to the replay record when it is acted on; its job id
  is then single-use on this device (the same command again is ``replayed``, another one with that
  id ``duplicate_job``), so no command can overwrite the record of a job that ran.
- **Queue**: deploys wait behind the running job, at most ``[ota] queue_size`` of them (``busy``).
- **Cancel**: removes a queued job, or abandons the running one (the runner notices within 50 ms).
- **Rollback**: goes first in line; an update still in progress is abandoned for it.
"""

from __future__ import annotations

import logging

from device_agent.contract.enums import CommandKind, JobState
from device_agent.contract.errors import OtaError
from device_agent.contract.protocol import Command
from device_agent.contract.topics import valid_id
from device_agent.ota.gate import UNAUTHENTICATED, CommandGate
from device_agent.ota.job import parse_job
from device_agent.ota.machine import ACTIVE, OtaState
from device_agent.ota.record import QueuedJob
from device_agent.ota.runner import Runner
from device_agent.ota.seams import JobReport, model_ref

__all__ = ["CommandInbox"]

log = logging.getLogger("edgekit.agent.ota")


class CommandInbox:
    """Takes the commands of one device's updater (its :class:`~device_agent.ota.runner.Runner`), through ``gate``."""

    def __init__(self, runner: Runner, gate: CommandGate) -> None:
        self.r = runner
        self.gate = gate

    def handle(self, cmd: Command) -> None:
        """Take a deploy / rollback / cancel command. Long work happens on the updater thread."""
        r = self.r
        with r.lock:
            try:
                digest = self.gate.check(cmd)
            except OtaError as e:  # not this device's to act on: nothing changes, nothing is retained
                # a signed command sent where or when it was not meant to be is news; unsigned junk is only noise
                log.log(logging.INFO if e.reason in UNAUTHENTICATED else logging.WARNING, "OTA: command %s refused (%s): %s", cmd.job,
                        e.reason, e)
                self._report(cmd.job, JobState.REJECTED, e.reason, str(e), record=False)
                return
            # a job already queued under this id was admitted before a crash that came before the replay
            # record was written (this is the QoS 1 redelivery after the restart): only the record is missing
            if not self._known(cmd.job):
                try:
                    self._admit(cmd, QueuedJob(cmd.job, cmd.kind, cmd.ts, cmd.device, cmd.params))
                except OtaError as e:  # an accepted command's outcome: recorded like any job's
                    self._report(cmd.job, JobState.REJECTED, e.reason, str(e))
            self.gate.remember(cmd, digest)
        r.wake.set()

    def _known(self, job: str) -> bool:
        rec = self.r.record
        return (rec.job is not None and rec.job.id == job) or any(q.id == job for q in rec.queue)

    def _admit(self, cmd: Command, entry: QueuedJob) -> None:
        if cmd.kind == CommandKind.DEPLOY:
            self._queue_deploy(cmd, entry)
            return
        r = self.r
        if cmd.kind == CommandKind.CANCEL:
            self._cancel(cmd)
            return
        # ROLLBACK: first in line; an update still in progress is abandoned (it was not what the operator wants served).
        # On probation the revert of that update *is* the rollback: the rollback job then targets what was served before it.
        if r.state in ACTIVE:
            r.cancel = "rollback"
            if r.state == OtaState.PROBATION and not entry.params.get("to"):
                entry = QueuedJob(entry.id, entry.kind, entry.ts, entry.device, {**entry.params, "to": r.record.from_slot})
        r.update(queue=(entry, *r.record.queue))

    def _queue_deploy(self, cmd: Command, entry: QueuedJob) -> None:
        r = self.r
        rec = r.record
        parse_job(cmd.job, cmd.params, defaults=r.settings.probation, limits=r.settings.limits)
        # the running job: taken from the queue already (rec.job), or about to be (the queue's head while IDLE)
        if rec.job is not None:
            running: str | None = rec.job.id
            waiting = len(rec.queue)
        else:
            running = rec.queue[0].id if rec.queue else None
            waiting = max(0, len(rec.queue) - 1)
        if running is not None and waiting >= r.settings.queue_size:
            raise OtaError(f"job {running} is running and {waiting} job(s) are queued (the bound, [ota] queue_size = "
                           f"{r.settings.queue_size}); resend after they finish", reason="busy")
        r.update(queue=(*rec.queue, entry))
        if running is not None:
            self._report(cmd.job, JobState.QUEUED, "", f"queued behind job {running} (position {waiting + 1})")

    def _cancel(self, cmd: Command) -> None:
        r = self.r
        target = cmd.params.get("target")
        if not isinstance(target, str) or not valid_id(target):
            raise OtaError("cancel needs params.target, the job id to cancel", reason="bad_job")
        queued = [q for q in r.record.queue if q.id == target]
        running = r.record.job
        if queued:
            r.update(queue=tuple(q for q in r.record.queue if q.id != target))
            r.report(JobReport(target, JobState.CANCELED, "canceled", f"canceled by job {cmd.job} before it started", str(r.state)))
        elif running is not None and running.id == target and r.state in ACTIVE:
            r.cancel = "canceled"
        else:
            raise OtaError(f"job {target} is neither queued nor running on this device; nothing to cancel", reason="unknown_job")
        r.report(JobReport(cmd.job, JobState.SUCCEEDED, "", f"cancel of {target} requested", str(r.state)))

    def _report(self, job: str, state: JobState, reason: str, detail: str, *, record: bool = True) -> None:
        r = self.r
        r.report(JobReport(job, state, reason, detail, str(r.state), model_ref(r.get_model()), record=record))
