"""SHADOW: the candidate runs beside the served model on sampled live inputs; promoted on top-1 agreement."""

from __future__ import annotations

from device_agent.contract.errors import OtaError
from device_agent.ota.machine import OtaState
from device_agent.ota.probation import Shadow
from device_agent.ota.runner import Runner
from device_agent.ota.states.staged import swap_in

__all__ = ["Shadowing"]


class Shadowing:
    state = OtaState.SHADOW

    def run(self, r: Runner) -> None:
        job = r.deploy_job()
        cand = r.load_candidate()
        sh = Shadow(cand, job.probation, started=r.record.shadow_started or r.clock(), clock=r.clock)
        r.shadow = sh
        try:
            r.wait(sh.decided, job.probation.shadow_seconds + 5.0, sh.tick)
        finally:
            r.shadow = None
            sh.stop()
        if r.cancel:
            raise OtaError(f"abandoned during shadow ({r.cancel})", reason="canceled")
        v = sh.verdict
        if v is None:
            raise OtaError("shadow mode did not finish in time", reason="timeout")
        if not v.passed:
            raise OtaError(f"not promoted: {v.detail}", reason=v.reason)
        swap_in(r, note=v.detail)
