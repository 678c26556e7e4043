"""IDLE: take the next job from the queue; refuse it, find it already done, roll back, or start downloading."""

from __future__ import annotations

from device_agent.contract.enums import CommandKind
from device_agent.contract.errors import AgentError, OtaError
from device_agent.contract.manifest import MANIFEST_NAME
from device_agent.ota.job import DeployJob
from device_agent.ota.machine import Event, OtaState
from device_agent.ota.record import QueuedJob
from device_agent.ota.runner import Runner, Stop
from device_agent.ota.store import slot_name
from device_agent.ota.verify import check_version, verify_manifest

__all__ = ["Idle"]


class Idle:
    state = OtaState.IDLE

    def run(self, r: Runner) -> None:
        with r.lock:
            entry = r.record.job  # taken from the queue before a restart, not started yet
            queue = r.record.queue
            if entry is None and queue:
                entry = queue[0]
                r.update(queue=queue[1:], job=entry)
        if entry is None:
            r.wake.wait(0.2)
            r.wake.clear()
            if r.stop.is_set():
                raise Stop
            return
        r.cancel = None
        if entry.kind == CommandKind.ROLLBACK:
            _manual_rollback(r, entry)
            return
        try:
            job = r.deploy_job(entry)
            _accept(r, job)
        except OtaError as e:
            r.move(Event.REJECT, reason=e.reason, detail=str(e))
            return
        current = r.get_model()
        slot = slot_name(job.version)
        if current is not None and current.version == job.version and r.installed(slot) \
                and (r.store.path(slot) / MANIFEST_NAME).read_bytes() == job.manifest_bytes:
            r.move(Event.PASS, reason="already_current", detail=f"version {job.version} is already served; nothing to do")
            return
        r.move(Event.START, started=round(r.clock(), 3), from_slot=r.store.current, to_slot=slot,
               reason="", detail=f"downloading {job.total_bytes:,} bytes over {job.method}")


def _accept(r: Runner, job: DeployJob) -> None:
    """Checks that need no download: the signature, the version, and whether this release was rolled back here."""
    verify_manifest(job.manifest_bytes, job.signature, r.trusted)
    current = r.get_model()
    check_version(job.version, current.version if current is not None and current.manifest is not None else None)
    reverted = r.record.reverted(job.name, slot_name(job.version))
    if reverted is not None and not job.allow_rolled_back:
        raise OtaError(f"{job.name} {job.version} was rolled back on this device ({reverted.reason}); it is deployed again only on "
                       "purpose: `edgekit fleet deploy --allow-rolled-back` (signed into the job)", reason="rolled_back")


def _manual_rollback(r: Runner, entry: QueuedJob) -> None:
    """A signed rollback command: back to ``params.to`` (default: the previous version)."""
    target: str | None = entry.params.get("to") or r.store.previous
    if target is not None:
        target = slot_name(str(target))
    if target is not None and target == r.store.current:
        r.move(Event.ROLLBACK, reason="manual_rollback", from_slot=target, target=target,
               detail=f"already serving {target} (an update on probation was reverted for this rollback)")
        return
    if not target or not r.installed(target):
        r.move(Event.REJECT, reason="no_previous", detail=f"no installed version {target or '(previous)'} to roll back to; "
               f"installed: {', '.join(r.store.slots())}")
        return
    try:
        model = r.loader(r.store.path(target))
    except AgentError as e:
        r.move(Event.REJECT, reason="load_failed", detail=f"version {target} does not load any more: {e}")
        return
    r.incumbent = model
    r.move(Event.ROLLBACK, reason="manual_rollback", from_slot=r.store.current, target=target,
           detail=f"rolled back from {r.store.current} to {target} on request")
