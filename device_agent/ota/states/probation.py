"""PROBATION: the new model serves; live requests judge it (NaN, errors, latency) until it passes or is reverted."""

from __future__ import annotations

import logging

from device_agent.contract.errors import AgentError
from device_agent.ota.latency import LatencyJudge
from device_agent.ota.machine import Event, OtaState
from device_agent.ota.probation import Probation
from device_agent.ota.runner import Runner

__all__ = ["OnProbation"]

log = logging.getLogger("edgekit.agent.ota")


class OnProbation:
    state = OtaState.PROBATION

    def run(self, r: Runner) -> None:
        rec = r.record
        job = r.deploy_job()
        slot = r.to_slot()
        if r.store.current != slot:
            r.store.activate(slot)  # the pointer flip of the swap was lost
        _serve_candidate(r, slot)
        pr = Probation(job.probation, judge=_judge(r), started=rec.probation_started or r.clock(), clock=r.clock)
        r.probation = pr
        try:
            r.wait(pr.decided, job.probation.seconds + 5.0, pr.tick)
        finally:
            r.probation = None
        if r.cancel:
            reason = "canceled" if r.cancel == "canceled" else "manual_rollback"
            r.move(Event.FAIL, reason=reason, target=rec.from_slot, detail=f"rolled back during probation: {r.cancel} requested")
            return
        v = pr.verdict
        r.last_verdict = v
        if v is None or v.passed:
            r.move(Event.PASS, reason="passed", detail=f"committed {job.version}: " + (v.detail if v else "probation time up"))
        else:
            r.move(Event.FAIL, reason=v.reason, target=rec.from_slot, detail=f"rolled back {job.version}: {v.detail}")


def _judge(r: Runner) -> LatencyJudge | None:
    """Paired latency runs of the candidate and the model it replaced; None when there is no replaced model loaded."""
    cand, old = r.candidate, r.incumbent
    if cand is None or old is None:
        return None
    vectors = cand.manifest.selftest_vectors(cand.artifact.file) if cand.manifest is not None and cand.artifact is not None else []
    return LatencyJudge(r.deploy_job().probation, cand, old, vectors[0][0] if vectors else None)


def _serve_candidate(r: Runner, slot: str) -> None:
    """Make sure the candidate serves and the old model is loaded for a fast rollback (after a restart, neither is given)."""
    served = r.get_model()
    if r.candidate is None or served is not r.candidate:
        if served is not None and served.path == r.store.path(slot):
            r.candidate, r.candidate_slot = served, slot  # restarted on probation: the agent loaded it
        else:
            r.incumbent = r.swap(r.load_candidate())
    from_slot = r.record.from_slot
    if r.incumbent is None and from_slot:
        try:  # after a restart: load the old model now, so a rollback is a swap, not a load
            r.incumbent = r.loader(r.store.path(from_slot))
        except AgentError as e:
            log.warning("OTA: the previous version cannot be preloaded (%s); a rollback will retry", e)
