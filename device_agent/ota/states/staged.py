"""STAGED: the new model is loaded beside the served one; compatible, finite, then shadowed or swapped in.

The swap itself (:func:`swap_in`) is where PROBATION starts: the state is saved, the store's
``current`` pointer flips, and the serving seam's one reference store makes the new model serve.
"""

from __future__ import annotations

from device_agent.contract.errors import OtaError
from device_agent.ota.faults import crashpoint
from device_agent.ota.machine import Event, OtaState
from device_agent.ota.probation import nonfinite
from device_agent.ota.runner import Runner
from device_agent.ota.verify import check_compatible
from device_agent.runtime.model import LoadedModel

__all__ = ["Staged", "swap_in"]


class Staged:
    state = OtaState.STAGED

    def run(self, r: Runner) -> None:
        job = r.deploy_job()
        cand = r.load_candidate()
        cur = r.get_model()
        if cur is not None and r.settings.check_compatible and not job.allow_incompatible:
            check_compatible(cur.inputs, cur.outputs, cand.inputs, cand.outputs)
        bad = _nonfinite_selftest(cand)
        if bad:
            raise OtaError(f"the new model gives NaN/Inf on its own self-test vectors ({bad})", reason="nan_outputs")
        if job.probation.shadow:
            r.move(Event.SHADOW, shadow_started=round(r.clock(), 3),
                   detail=f"shadow: comparing with the served model on {job.probation.shadow_sample:.0%} of live inputs")
        else:
            swap_in(r)


def swap_in(r: Runner, note: str = "") -> None:
    """Enter PROBATION: save it, flip the store's pointer, serve the candidate (the old model is kept for a rollback)."""
    job = r.deploy_job()
    p = job.probation
    detail = f"serving {job.version} on probation: {p.requests} requests or {p.seconds:g} s" + (f" ({note})" if note else "")
    r.move(Event.SWAP, probation_started=round(r.clock(), 3), crashes=0, detail=detail)
    r.store.activate(r.to_slot())
    crashpoint("swap.activated")
    candidate = r.candidate
    if candidate is None:
        raise RuntimeError("OTA: no candidate loaded to swap in")  # a bug: STAGED and SHADOW load it first
    r.incumbent = r.swap(candidate)


def _nonfinite_selftest(model: LoadedModel) -> str | None:
    """The first output that is NaN/Inf on the model's own self-test vectors (the first four), if any."""
    if model.manifest is None or model.artifact is None:
        return None
    for inputs, _ in model.manifest.selftest_vectors(model.artifact.file)[:4]:
        bad = nonfinite(model.run(inputs))
        if bad:
            return f"output {bad!r}"
    return None
