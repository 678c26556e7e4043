"""The operator's view of the fleet: device states, telemetry and job updates in; commands and
artifact chunks out — over the fleet side's MQTT session (:mod:`edgekit.fleet.mqtt`), QoS 1.

Everything received is folded into :class:`DeviceView` objects (latest state, latest telemetry,
latest update per job) under one lock; callers read snapshots and wait with bounded timeouts.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from device_agent.contract.protocol import (
    DEFAULT_PREFIX,
    Command,
    DeviceStatus,
    JobUpdate,
    StateMessage,
    TelemetryMessage,
    Topics,
    decode,
    encode,
)
from edgekit.errors import FleetError
from edgekit.fleet.mqtt import BrokerAddress, BrokerSession, Received, to_address

if TYPE_CHECKING:
    from paho.mqtt.client import MQTTMessageInfo

__all__ = ["DeviceView", "FleetClient"]

log = logging.getLogger("edgekit.fleet")


@dataclass
class DeviceView:
    """What the fleet knows about one device."""

    device: str
    state: StateMessage | None = None
    telemetry: TelemetryMessage | None = None
    jobs: dict[str, JobUpdate] = field(default_factory=dict)
    last_seen: float = 0.0

    @property
    def online(self) -> bool:
        return self.state is not None and self.state.status == DeviceStatus.ONLINE

    @property
    def group(self) -> str:
        return self.state.group if self.state else "?"

    @property
    def version(self) -> str | None:
        return (self.state.model or {}).get("version") if self.state and self.state.model else None

    @property
    def model_name(self) -> str | None:
        return (self.state.model or {}).get("name") if self.state and self.state.model else None


class FleetClient:
    """A connected fleet session. Use as a context manager.

    Args:
        broker: ``mqtt://host:1883`` or ``mqtts://host:8883``, or an address with credentials
            (:func:`edgekit.fleet.mqtt.parse_broker_url`).
        prefix: the topic prefix shared with the devices.
        client_id: the MQTT client id (default: ``edgekit-fleet-<random>``).
        connect_timeout: seconds for the broker to accept the connection and the subscriptions.
    """

    def __init__(self, broker: str | BrokerAddress, *, prefix: str = DEFAULT_PREFIX, client_id: str | None = None,
                 connect_timeout: float = 10.0) -> None:
        self.address = to_address(broker)
        self.prefix = prefix
        self.connect_timeout = connect_timeout
        self.devices: dict[str, DeviceView] = {}
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        # rollouts publish every chunk of a wave at once: let paho keep more of them in flight
        self.session = BrokerSession(self.address, client_id or f"edgekit-fleet-{uuid.uuid4().hex[:8]}",
                                     topics=(Topics.all_states(prefix), Topics.all_telemetry(prefix), Topics.all_jobs(prefix)),
                                     on_message=self._on_message, max_inflight=64)

    # --- connection ------------------------------------------------------------------------------

    def __enter__(self) -> FleetClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        """Connect and subscribe; raises FleetError when the broker is unreachable, refuses, or does not answer in time."""
        self.session.open()
        if not self.session.wait_ready(self.connect_timeout):
            self.close()
            raise FleetError(self.session.refusal
                             or f"the broker at {self.address.where} did not answer within {self.connect_timeout:g} s")

    def close(self) -> None:
        self.session.close()

    def _on_message(self, msg: Received) -> None:
        if not msg.payload:
            return  # a cleared retained message
        try:
            m = decode(msg.payload)
        except Exception as e:
            log.debug("fleet: ignoring a malformed message on %s: %s", msg.topic, e)
            return
        with self.changed:
            if isinstance(m, StateMessage):
                v = self._view(m.device)
                v.state = m
                v.last_seen = max(v.last_seen, m.ts)
            elif isinstance(m, TelemetryMessage):
                v = self._view(m.device)
                if v.telemetry is None or (m.boot, m.seq) >= (v.telemetry.boot, v.telemetry.seq):
                    v.telemetry = m
                v.last_seen = max(v.last_seen, m.ts)
            elif isinstance(m, JobUpdate):
                v = self._view(m.device)
                old = v.jobs.get(m.job)
                if m.reason == "replayed" or (old is not None and (m.seq == 0 or m.reason == "duplicate_job")):
                    pass  # a command run once already, a refused reuse, an answer outside the sequence: not this job's outcome
                elif old is None or (m.boot, m.seq) >= (old.boot, old.seq):
                    v.jobs[m.job] = m
                v.last_seen = max(v.last_seen, m.ts)
            else:
                return
            self.changed.notify_all()

    def _view(self, device: str) -> DeviceView:
        v = self.devices.get(device)
        if v is None:
            v = self.devices[device] = DeviceView(device)
        return v

    # --- reading -----------------------------------------------------------------------------------

    def settle(self, seconds: float = 1.0, *, quiet: float = 0.3) -> None:
        """Wait for retained messages to arrive: until ``quiet`` s pass without news, at most ``seconds``."""
        deadline = time.monotonic() + seconds
        with self.changed:
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not self.changed.wait(min(quiet, left)):
                    return

    def snapshot(self) -> dict[str, DeviceView]:
        with self.lock:
            return {k: DeviceView(v.device, v.state, v.telemetry, dict(v.jobs), v.last_seen) for k, v in self.devices.items()}

    def wait_for(self, predicate: Callable[[dict[str, DeviceView]], bool], timeout: float) -> bool:
        """Block until ``predicate(devices)`` holds (checked on every message) or ``timeout``."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not predicate(self.devices):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(min(left, 0.5))
        return True

    # --- sending -----------------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> MQTTMessageInfo:
        """QoS 1 publish; returns paho's MQTTMessageInfo (see :meth:`flush`)."""
        return self.session.publish(topic, payload, retain=retain)

    def flush(self, infos: Iterable[MQTTMessageInfo], timeout: float = 60.0) -> None:
        """Wait until the broker acknowledged every publish in ``infos``."""
        deadline = time.monotonic() + timeout
        for info in infos:
            while not info.is_published():
                if time.monotonic() > deadline:
                    raise FleetError(f"the broker did not acknowledge our messages within {timeout:g} s")
                info.wait_for_publish(0.1)

    def send(self, device: str, command: Command) -> MQTTMessageInfo:
        """Publish ``command`` on the device's command topic."""
        return self.publish(Topics(device, prefix=self.prefix).cmd, encode(command))

    def publish_chunks(self, device: str, job: str, chunks: Iterable[tuple[int, bytes]]) -> list[MQTTMessageInfo]:
        """Retained, so the device gets them whenever it (re)subscribes during the job."""
        t = Topics(device, prefix=self.prefix)
        return [self.publish(t.ota_chunk(job, n), payload, retain=True) for n, payload in chunks]

    def clear_chunks(self, device: str, job: str, count: int) -> list[MQTTMessageInfo]:
        """Delete the retained chunks of a finished job from the broker."""
        t = Topics(device, prefix=self.prefix)
        return [self.publish(t.ota_chunk(job, n), b"", retain=True) for n in range(count)]
