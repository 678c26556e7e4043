"""The fleet side's one MQTT adapter: watch device states, telemetry and job updates; send
commands and artifact chunks. paho-mqtt 2.x, VERSION2 callbacks, QoS 1 everywhere.

Everything received is folded into :class:`DeviceView` objects (latest state, latest telemetry,
latest update per job) under one lock; callers read snapshots and wait with bounded timeouts.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from device_agent.contract.protocol import (
    DEFAULT_PREFIX,
    QOS,
    Command,
    DeviceStatus,
    JobUpdate,
    StateMessage,
    TelemetryMessage,
    Topics,
    decode,
    encode,
)
from edgekit.errors import OtaError

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
        url: ``mqtt://host:1883`` or ``mqtts://host:8883``.
        prefix: the topic prefix shared with the devices.
    """

    def __init__(self, url: str, *, prefix: str = DEFAULT_PREFIX, username: str | None = None, password: str | None = None,
                 ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None, client_id: str | None = None,
                 connect_timeout: float = 10.0) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        u = urlsplit(url)
        if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
            raise OtaError(f"broker URL {url!r} must look like mqtt://host:1883 or mqtts://host:8883")
        self.host, self.port = u.hostname, u.port or (8883 if u.scheme == "mqtts" else 1883)
        self.prefix = prefix
        self.connect_timeout = connect_timeout
        self.devices: dict[str, DeviceView] = {}
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self._connected = threading.Event()
        self._error: str | None = None
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"edgekit-fleet-{uuid.uuid4().hex[:8]}",
                                  protocol=paho.MQTTv311, clean_session=True)
        self.client.max_inflight_messages_set(64)
        if username:
            self.client.username_pw_set(username, password)
        if u.scheme == "mqtts":
            self.client.tls_set(ca_certs=ca_file, certfile=cert_file, keyfile=key_file, cert_reqs=ssl.CERT_REQUIRED,
                                tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect

    # --- connection ------------------------------------------------------------------------------

    def __enter__(self) -> FleetClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        try:
            self.client.connect(self.host, self.port, keepalive=30)
        except (OSError, ssl.SSLError) as e:
            raise OtaError(f"cannot reach the broker at {self.host}:{self.port}: {e}; check --broker and that the broker runs") from None
        self.client.loop_start()
        if not self._connected.wait(self.connect_timeout):
            self.close()
            raise OtaError(self._error or f"the broker at {self.host}:{self.port} did not answer within {self.connect_timeout:g} s")

    def close(self) -> None:
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._error = f"the broker at {self.host}:{self.port} refused the connection: {reason_code}"
            return
        for t in (Topics.all_states(self.prefix), Topics.all_telemetry(self.prefix), Topics.all_jobs(self.prefix)):
            client.subscribe(t, qos=QOS)
        self._connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected.clear()

    def _on_message(self, client, userdata, msg) -> None:
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
                if m.reason == "duplicate_job" and old is not None:
                    pass  # a refused reuse of this job id: not this job's outcome
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

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> Any:
        """QoS 1 publish; returns paho's MQTTMessageInfo (see :meth:`flush`)."""
        return self.client.publish(topic, payload, qos=QOS, retain=retain)

    def flush(self, infos: Iterable[Any], timeout: float = 60.0) -> None:
        """Wait until the broker acknowledged every publish in ``infos``."""
        deadline = time.monotonic() + timeout
        for info in infos:
            while not info.is_published():
                if time.monotonic() > deadline:
                    raise OtaError(f"the broker did not acknowledge our messages within {timeout:g} s")
                info.wait_for_publish(0.1)

    def send(self, device: str, command: Command) -> Any:
        return self.publish(Topics(device, prefix=self.prefix).cmd, encode(command))

    def send_group(self, group: str, command: Command) -> Any:
        return self.publish(Topics("fleet", group, prefix=self.prefix).group_cmd, encode(command))

    def publish_chunks(self, device: str, job: str, chunks: Iterable[tuple[int, bytes]]) -> list[Any]:
        """Retained, so the device gets them whenever it (re)subscribes during the job."""
        t = Topics(device, prefix=self.prefix)
        return [self.publish(t.ota_chunk(job, n), payload, retain=True) for n, payload in chunks]

    def clear_chunks(self, device: str, job: str, count: int) -> list[Any]:
        """Delete the retained chunks of a finished job from the broker."""
        t = Topics(device, prefix=self.prefix)
        return [self.publish(t.ota_chunk(job, n), b"", retain=True) for n in range(count)]
