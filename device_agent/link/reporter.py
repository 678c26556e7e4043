"""What the device tells the fleet, built once here and queued in the outbox: telemetry windows, job
state changes, and the retained state (birth on connect, Last Will and clean-shutdown "offline").

Every message goes through the :class:`~device_agent.link.outbox.Outbox` (except the state, which
MQTT retains), so ``seq`` is assigned when it is stored and survives restarts.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from pathlib import Path

from device_agent import __version__
from device_agent.contract.enums import DeviceStatus, JobState
from device_agent.contract.protocol import STATE_SEQ_OFFLINE, JobUpdate, StateMessage, TelemetryMessage, encode, state_seq
from device_agent.contract.topics import Topics
from device_agent.contract.types import JsonDict
from device_agent.link.outbox import Outbox
from device_agent.ota.seams import ModelRef
from device_agent.runtime.base import runtime_versions
from device_agent.runtime.model import LoadedModel
from device_agent.serve.agent import Agent
from device_agent.telemetry.window import Window

__all__ = ["Reporter", "hardware_summary", "state_message"]


def state_message(agent: Agent, status: DeviceStatus, reason: str | None = None, *, device: str, group: str, boot: int,
                  seq: int = 0) -> StateMessage:
    """The retained state of a device serving ``agent``'s model (the model and hardware only when online)."""
    online = status == DeviceStatus.ONLINE
    return StateMessage(
        device=device, status=status, ts=round(agent.clock(), 3), boot=boot, agent_version=__version__, group=group,
        model={**agent.model.summary(), "ready": agent.ready, "selftest": agent.model.selftest.passed} if online else None,
        runtime=runtime_versions(), hardware=hardware_summary() if online else {}, reason=reason, seq=seq,
        runtime_check=agent.model.runtime_check if online else None,
    )


class Reporter:
    """Queues one device's messages on its topics (built once, by the daemon).

    Args:
        agent: the serving agent (its window, feedback, model and clock).
        outbox: where messages wait for the broker.
        topics: this device's topics.
        boot: this start's number (the outbox's persistent counter).
        connects: how many MQTT connections the link has made (orders state messages).
    """

    def __init__(self, agent: Agent, outbox: Outbox, topics: Topics, *, boot: int, connects: Callable[[], int] = lambda: 0) -> None:
        self.agent = agent
        self.outbox = outbox
        self.topics = topics
        self.boot = boot
        self.connects = connects
        self._state_conn, self._state_n = -1, 0  # state message order (protocol.state_seq)
        self._runtime = runtime_versions()  # read once: the installed runtimes do not change under a running agent

    def telemetry(self, *, window: Window | None = None, model: LoadedModel | None = None) -> int:
        """Close the agent's current window (or a retired ``window`` of ``model``) and queue its telemetry
        message; returns its ``seq``."""
        agent = self.agent
        window = window or agent.window
        model = model or agent.model
        content = window.close()
        feedback = agent.feedback.take() if agent.feedback is not None else None
        depth = self.outbox.depth

        def build(seq: int, dropped: int) -> bytes:
            features = list(content["features"])
            left_out = agent.features_left_out
            while True:
                msg = TelemetryMessage(device=self.topics.device, seq=seq, boot=self.boot, ts=round(agent.clock(), 3),
                                       model={"name": model.name, "version": model.version}, window=content["window"],
                                       requests=content["requests"], errors=content["errors"], latency_ms=content["latency_ms"],
                                       features=features, features_dropped=left_out, samples=content["samples"], dropped=dropped,
                                       feedback=feedback, outbox=depth, agent_version=__version__, runtime=self._runtime,
                                       runtime_check=model.runtime_check)
                payload = encode(msg)
                if len(payload) <= agent.max_payload_bytes or not features:
                    return payload
                # over budget (long feature names, many bins): the profile's last features go first
                cut = max(1, len(features) // 8)
                features = features[:-cut]
                left_out += cut

        return self.outbox.append(self.topics.telemetry, build)

    def job(self, job: str, state: JobState, detail: str = "", *, reason: str = "", ota_state: str = "",
            model: ModelRef | None = None) -> int:
        """Queue a job state change. Retained per job topic, so ``edgekit fleet jobs`` sees the latest
        state of every job without a fleet-side daemon."""
        ref: JsonDict = dict(model) if model else {"name": self.agent.model.name, "version": self.agent.model.version}
        return self.outbox.append(self.topics.job(job), lambda seq, dropped: encode(JobUpdate(
            device=self.topics.device, seq=seq, boot=self.boot, ts=round(self.agent.clock(), 3), job=job, state=state, detail=detail,
            model=ref, dropped=dropped, reason=reason, ota_state=ota_state)), retain=True)

    def answer(self, job: str, state: JobState, detail: str = "", *, reason: str = "", ota_state: str = "",
               model: ModelRef | None = None) -> tuple[str, bytes]:
        """(topic, payload) of the answer to a command the device did not accept: ``seq`` 0 (outside the
        device's sequence, never stored), sent once and not retained, so it can never replace a job's record."""
        ref: JsonDict = dict(model) if model else {"name": self.agent.model.name, "version": self.agent.model.version}
        return self.topics.job(job), encode(JobUpdate(device=self.topics.device, seq=0, boot=self.boot, ts=round(self.agent.clock(), 3),
                                                      job=job, state=state, detail=detail, model=ref, reason=reason, ota_state=ota_state))

    def state(self, status: DeviceStatus, reason: str | None = None, *, seq: int = 0) -> StateMessage:
        return state_message(self.agent, status, reason, device=self.topics.device, group=self.topics.group, boot=self.boot, seq=seq)

    def birth(self) -> bytes:
        """The retained "online" state, numbered within the current connection."""
        conn = self.connects()
        if conn != self._state_conn:
            self._state_conn, self._state_n = conn, 0
        self._state_n += 1
        return encode(self.state(DeviceStatus.ONLINE, seq=state_seq(conn, self._state_n)))

    def will(self, reason: str) -> bytes:
        """The retained "offline" state: the Last Will ("lwt") or the clean shutdown's ("shutdown")."""
        # the Last Will is registered before connecting: it belongs to the connection about to be made
        conn = self.connects() + (1 if reason == "lwt" else 0)
        return encode(self.state(DeviceStatus.OFFLINE, reason, seq=state_seq(conn, STATE_SEQ_OFFLINE)))


def hardware_summary() -> JsonDict:
    """What the fleet needs to know about the device (no identifiers beyond the hostname)."""
    out: JsonDict = {
        "machine": platform.machine(),
        "system": platform.system(),
        "release": platform.release(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "hostname": platform.node(),
    }
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    out["memory_mb"] = int(line.split()[1]) // 1024
                    break
    except OSError:
        pass
    try:
        out["board"] = Path("/proc/device-tree/model").read_text().strip("\x00\n ")  # e.g. "Raspberry Pi 4 Model B Rev 1.4"
    except OSError:
        pass
    return out
