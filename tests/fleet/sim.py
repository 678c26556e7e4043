"""Lightweight simulated devices for fleet tests and benchmarks/ota.py.

Each :class:`SimDevice` is the real update path — :class:`device_agent.ota.updater.Updater`, a
:class:`device_agent.ota.store.ModelStore`, signature and sha256 checks, chunk assembly, probation —
on its own paho client (retained birth state, Last Will, QoS 1, retained job updates), without
the HTTP server or telemetry. What is shared to keep hundreds of them in one process: the ONNX
Runtime session of each distinct artifact (sessions are thread-safe for ``run``), and one traffic
thread that sends requests to every device round-robin so probation has something to judge.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from device_agent import __version__
from device_agent.contract.errors import AgentError
from device_agent.contract.manifest import load_manifest
from device_agent.contract.protocol import QOS, Command, DeviceStatus, JobUpdate, StateMessage, Topics, decode, encode
from device_agent.ota import JobReport, OtaSettings, ServingModel
from device_agent.ota.gate import Identity
from device_agent.ota.store import ModelStore
from device_agent.ota.updater import Updater
from device_agent.ota.verify import TrustedKeys
from device_agent.runtime.model import load_model

_CACHE: dict[str, object] = {}
_CACHE_LOCK = threading.Lock()


def shared_loader(path: Path):
    """load_model, with the backend shared between devices that hold the same artifact bytes."""
    key = load_manifest(path).artifacts[0].sha256
    with _CACHE_LOCK:
        base = _CACHE.get(key)
        if base is None:
            base = _CACHE[key] = load_model(path, threads=1)
    return dataclasses.replace(base, path=Path(path))


class SimDevice:
    def __init__(self, device: str, root: Path, initial: Path, *, broker_port: int, trusted: TrustedKeys, group: str = "sim",
                 settings: OtaSettings | None = None, faulty: bool = False) -> None:
        """``faulty``: on this device every model other than the initial one gives NaN (a device where
        the new model misbehaves: the canary failures a rollout must catch)."""
        self.topics = Topics(device, group)
        self.faulty = faulty
        self.store = ModelStore(root / "models", keep=2)
        if self.store.current is None:
            self.store.adopt(initial)
        self.serving = ServingModel(None)
        self.seq = 0
        self._lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=device, protocol=paho.MQTTv311, clean_session=False)
        self.client.max_queued_messages_set(0)
        self.client.will_set(self.topics.state, encode(self._state(DeviceStatus.OFFLINE, "lwt")), qos=QOS, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.updater = Updater(self.store, root / "ota.json", trusted=trusted, get_model=self.serving.get, swap=self.serving.swap,
                               loader=self._load, report=self._report, settings=settings or OtaSettings(), transport=self,
                               chunk_filter=self.topics.ota_chunks, identity=Identity(device, group))
        self.serving.model = self._load(self.updater.boot())
        self.connected = threading.Event()
        self.client.connect("127.0.0.1", broker_port, keepalive=30)
        self.client.loop_start()
        self.updater.start()

    def _load(self, path: Path):
        m = shared_loader(path)
        if self.faulty and self.store.history and path.name != self.store.history[0]:
            real = m.backend

            class NaNBackend:
                runtime, inputs, outputs, path = real.runtime, real.inputs, real.outputs, real.path

                def run(self, feeds):
                    return {k: np.full_like(v, np.nan) for k, v in real.run(feeds).items()}

            m = dataclasses.replace(m, backend=NaNBackend())
        return m

    # --- MQTT -----------------------------------------------------------------------------------
    def subscribe(self, topic_filter: str) -> None:
        self.client.subscribe(topic_filter, qos=QOS)

    def unsubscribe(self, topic_filter: str) -> None:
        self.client.unsubscribe(topic_filter)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        for t in self.topics.subscriptions():
            client.subscribe(t, qos=QOS)
        client.publish(self.topics.state, encode(self._state(DeviceStatus.ONLINE)), qos=QOS, retain=True)
        self.connected.set()

    def _on_message(self, client, userdata, msg) -> None:
        if "/ota/" in msg.topic:
            if msg.payload:
                self.updater.on_chunk(msg.topic, msg.payload)
            return
        try:
            m = decode(msg.payload)
        except Exception:
            return
        if isinstance(m, Command):
            self.updater.handle(m)

    def _state(self, status: DeviceStatus, reason: str | None = None) -> StateMessage:
        m = self.serving.get()
        model = {"name": m.name, "version": m.version, "artifact": m.file.name} if m is not None and status == DeviceStatus.ONLINE else None
        return StateMessage(device=self.topics.device, status=status, ts=round(time.time(), 3), boot=1, agent_version=__version__,
                            group=self.topics.group, model=model, reason=reason)

    def _report(self, r: JobReport) -> None:
        with self._lock:
            self.seq += r.record  # an answer to a refused command is outside the sequence (seq 0), and not retained
            u = JobUpdate(device=self.topics.device, seq=self.seq if r.record else 0, boot=1, ts=round(time.time(), 3), job=r.job,
                          state=r.state, detail=r.detail, model=r.model, reason=r.reason, ota_state=r.ota_state)
        self.client.publish(self.topics.state, encode(self._state(DeviceStatus.ONLINE)), qos=QOS, retain=True)
        self.client.publish(self.topics.job(r.job), encode(u), qos=QOS, retain=r.record)

    # --- serving ----------------------------------------------------------------------------------
    def predict(self, x: np.ndarray) -> None:
        m = self.serving.get()
        t0 = time.perf_counter()
        try:
            out = m.run({"x": x})
        except AgentError:
            self.updater.observe(m, {"x": x}, None, None, "runtime")
            return
        self.updater.observe(m, {"x": x}, out, time.perf_counter() - t0)

    def stop(self) -> None:
        self.updater.stop()
        self.client.publish(self.topics.state, encode(self._state(DeviceStatus.OFFLINE, "shutdown")), qos=QOS, retain=True).wait_for_publish(2)
        self.client.disconnect()
        self.client.loop_stop()


class Traffic:
    """One thread sending requests to every device in turn (≈ ``rate`` requests/s overall)."""

    def __init__(self, devices: list[SimDevice], rate: float = 2000.0) -> None:
        self.devices = devices
        self.rate = rate
        self._stop = threading.Event()
        self.sent = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
        next_t = time.monotonic()
        while not self._stop.is_set():
            for d in list(self.devices):
                d.predict(x)
                self.sent += 1
            next_t += len(self.devices) / self.rate
            delay = next_t - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                next_t = time.monotonic()
