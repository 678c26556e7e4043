"""One action per OTA state, as in mender's state classes: each knows what to do in its state and
which event moves it on (:meth:`device_agent.ota.runner.Runner.move` saves the next state first).

::

    IDLE          idle.py          take the next job; refuse, already current, manual rollback, or START
    DOWNLOADING   downloading.py   MQTT chunks or HTTP(S), resumable, until the job's deadline
    VERIFYING     verifying.py     signature, size and sha256 of every artifact; install the version slot
    STAGED        staged.py        load beside the served model, compatibility, NaN self-test; swap in
    SHADOW        shadow.py        compare top-1 with the served model on sampled live inputs
    PROBATION     probation.py     live requests judge the new model: PASS or FAIL
    COMMITTED / REJECTED / ROLLED_BACK   finished.py   make the store and the served model match; report; DONE
"""

from __future__ import annotations

from collections.abc import Mapping

from device_agent.ota.machine import OtaState
from device_agent.ota.runner import StateAction
from device_agent.ota.states.downloading import Downloading
from device_agent.ota.states.finished import Committed, Rejected, RolledBack
from device_agent.ota.states.idle import Idle
from device_agent.ota.states.probation import OnProbation
from device_agent.ota.states.shadow import Shadowing
from device_agent.ota.states.staged import Staged
from device_agent.ota.states.verifying import Verifying

__all__ = ["ACTIONS"]


def _table(*actions: StateAction) -> Mapping[OtaState, StateAction]:
    table = {a.state: a for a in actions}
    missing = set(OtaState) - set(table)
    if len(table) != len(actions) or missing:  # a state with two actions, or none: a bug in this package
        raise RuntimeError(f"OTA: every state needs exactly one action; missing: {sorted(map(str, missing))}")
    return table


#: the action of every state
ACTIONS: Mapping[OtaState, StateAction] = _table(Idle(), Downloading(), Verifying(), Staged(), Shadowing(), OnProbation(), Committed(),
                                                 Rejected(), RolledBack())
