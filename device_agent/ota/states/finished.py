"""The three ends — COMMITTED, REJECTED, ROLLED_BACK: make the store and the served model match the outcome, report it, go IDLE."""

from __future__ import annotations

import logging
import time

from device_agent.ota.faults import crashpoint
from device_agent.ota.machine import OtaState
from device_agent.ota.runner import Runner

__all__ = ["Committed", "Rejected", "RolledBack"]

log = logging.getLogger("edgekit.agent.ota")


class Committed:
    state = OtaState.COMMITTED

    def run(self, r: Runner) -> None:
        r.clear_models()
        r.finish()


class Rejected:
    state = OtaState.REJECTED

    def run(self, r: Runner) -> None:
        rec = r.record
        if rec.job is not None:
            r.store.discard_incoming(rec.job.id)
        if rec.from_slot and r.store.current != rec.from_slot:
            r.ensure_current(rec.from_slot)  # never served: the pointers must still name the old version
        r.clear_models()
        r.finish()


class RolledBack:
    state = OtaState.ROLLED_BACK

    def run(self, r: Runner) -> None:
        target = r.record.target
        if target and not r.installed(target):
            log.error("OTA: cannot roll back: version %s is no longer installed; still serving %s", target, r.store.current)
            target = None
        r.ensure_current(target)
        crashpoint("rollback.reverted")
        served = r.get_model()
        if target and (served is None or served.path != r.store.path(target)):
            incumbent = r.incumbent
            model = incumbent if incumbent is not None and incumbent.path == r.store.path(target) else r.loader(r.store.path(target))
            r.swap(model)
            v = r.last_verdict
            if v is not None and not v.passed:
                r.last_rollback_s = time.monotonic() - v.at
                log.warning("OTA: rolled back to %s %.1f ms after the failed probation check (%s)", target, r.last_rollback_s * 1e3,
                            v.reason)
        r.clear_models()
        r.finish()
