"""The OTA room: over-the-air model updates, from a deploy command to a committed or reverted version.

- ``machine``: the states, the one transition table, the job states the fleet sees;
- ``record``: ``ota.json``, the frozen, versioned :class:`~device_agent.ota.record.OtaRecord` saved before every move;
- ``inbox``: commands in — the queue, cancel — behind ``gate`` (signature, target, expiry, the replay record of
  ``replay``); ``runner``: the update thread and ``move``;
- ``states/``: one action per state (mender's state classes are the model);
- ``updater``: the :class:`~device_agent.ota.updater.Updater` the daemon holds (boot recovery, observe, status);
- ``job``: the job document; ``delivery``: MQTT chunks and HTTP(S); ``verify``: signatures, sha256, versions;
  ``store``: versioned model slots; ``probation``: probation and shadow judges (``latency``: paired latency runs,
  ``verdicts``: what judges return); ``faults``: crash points for tests;
- ``seams``: settings, job reports, the transport and the served-model seam.

Imports the runtime and contract rooms only. The names below are re-exported for ``from device_agent.ota import ...``.
"""

from device_agent.ota.machine import ACTIVE, FINAL, TRANSITIONS, Event, OtaState, job_state
from device_agent.ota.seams import JobReport, OtaSettings, ServingModel, Transport

__all__ = ["ACTIVE", "FINAL", "TRANSITIONS", "Event", "JobReport", "OtaSettings", "OtaState", "ServingModel", "Transport", "job_state"]
