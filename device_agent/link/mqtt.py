"""The one paho-mqtt (2.x) adapter: connect, TLS, Last Will, reconnect with jittered backoff,
outbox pumping with PUBACK-confirmed deletion, and command dispatch.

One thread owns the paho client (``client.loop`` + publish happen on it), so no paho call is
ever made from two threads. Other threads only write to the outbox and call :meth:`wake`.

Delivery: a message leaves the outbox only after the broker's PUBACK for it. Messages in flight
when the connection drops are re-sent by paho after the reconnect (DUP set); if the agent dies
first they are still in the outbox and are sent again after restart — the consumer drops the
repeat by ``seq``. Order is kept: the outbox is read oldest first, and resends precede new sends.
"""

from __future__ import annotations

import collections
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from device_agent.config.schema import BrokerConfig
from device_agent.contract.topics import QOS, Topics
from device_agent.link.outbox import Outbox

__all__ = ["MqttLink", "backoff_delays"]

log = logging.getLogger("edgekit.agent.mqtt")

CONNACK_TIMEOUT_S = 10.0
#: best-effort messages waiting for the link thread (send_once); older ones are dropped
ONESHOTS_MAX = 32
EXPIRE_EVERY_S = 60.0


def backoff_delays(minimum: float, maximum: float, rng: random.Random) -> Iterator[float]:
    """Reconnect delays: exponential from ``minimum`` to ``maximum``, each drawn in [d/2, d] so a
    fleet that lost its broker together does not reconnect together."""
    d = minimum
    while True:
        yield rng.uniform(d / 2, d)
        d = min(maximum, d * 2)


class MqttLink:
    """Owns the MQTT connection of one device.

    Args:
        cfg: the [broker] section.
        topics: this device's topics.
        outbox: the queue to drain (oldest first).
        birth: builds the retained "online" state payload (called on every connect).
        will: builds the retained "offline" payload (Last Will, and the clean-shutdown message).
        on_message: called on the link thread with (topic, payload) for commands; keep it short.
        password: the broker password (read from ``password_file`` by the caller).
    """

    def __init__(self, cfg: BrokerConfig, topics: Topics, outbox: Outbox, *, birth: Callable[[], bytes], will: Callable[[str], bytes],
                 on_message: Callable[[str, bytes], None] | None = None, password: str | None = None,
                 rng: random.Random | None = None) -> None:
        self.cfg = cfg
        self.topics = topics
        self.outbox = outbox
        self._birth = birth
        self._will = will
        self._on_message = on_message
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = False
        self.last_error: str | None = None
        self.connects = 0
        self.acked = 0
        self._inflight: dict[int, int] = {}  # paho mid -> outbox row id
        self._acks: list[int] = []
        self._last_sent_id = 0
        self._transport = False
        self._connack_deadline = 0.0
        self._next_expire = 0.0
        # extra subscriptions (OTA chunk topics of a running job) and a pending state refresh; changed
        # from other threads, applied on the link thread, re-applied after every reconnect
        self._extra: set[str] = set()
        self._sub_ops: list[tuple[bool, str]] = []
        self._oneshots: collections.deque[tuple[str, bytes]] = collections.deque(maxlen=ONESHOTS_MAX)
        self._ops_lock = threading.Lock()
        self._state_dirty = False
        self.client = self._make_client(password)

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="edgekit-mqtt", daemon=True)
        self._thread.start()

    def subscribe(self, topic_filter: str) -> None:
        """Subscribe (QoS 1) now and after every reconnect; retained messages on it are replayed."""
        with self._ops_lock:
            self._extra.add(topic_filter)
            self._sub_ops.append((True, topic_filter))

    def unsubscribe(self, topic_filter: str) -> None:
        with self._ops_lock:
            self._extra.discard(topic_filter)
            self._sub_ops.append((False, topic_filter))

    def send_once(self, topic: str, payload: bytes) -> None:
        """Publish once, best effort: not stored in the outbox, not retained, dropped while disconnected (and the
        oldest dropped beyond ONESHOTS_MAX waiting). For answers to commands the device did not accept."""
        with self._ops_lock:
            self._oneshots.append((topic, payload))

    def publish_state(self) -> None:
        """Publish the retained birth state again (e.g. after the served model changed)."""
        self._state_dirty = True

    def _apply_ops(self) -> None:
        with self._ops_lock:
            ops, self._sub_ops = self._sub_ops, []
            oneshots = list(self._oneshots)
            self._oneshots.clear()
        for topic, payload in oneshots:
            self.client.publish(topic, payload, qos=QOS, retain=False)
        for sub, topic in ops:
            if sub:
                self.client.subscribe(topic, qos=QOS)
            else:
                self.client.unsubscribe(topic)
        if self._state_dirty:
            self._state_dirty = False
            self.client.publish(self.topics.state, self._birth(), qos=QOS, retain=True)

    def stop(self, timeout: float = 5.0) -> None:
        """Publish the "offline" state (retained), disconnect cleanly, stop the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # --- paho setup ----------------------------------------------------------------------------

    def _make_client(self, password: str | None) -> paho.Client:
        proto = paho.MQTTv5 if self.cfg.protocol == "5" else paho.MQTTv311
        kwargs: dict[str, Any] = {"clean_session": False} if proto == paho.MQTTv311 else {}
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.topics.device, protocol=proto, **kwargs)
        client.max_inflight_messages_set(self.cfg.max_inflight)
        client.max_queued_messages_set(0)
        client.connect_timeout = 5.0
        if self.cfg.username:
            client.username_pw_set(self.cfg.username, password)
        if self.cfg.tls:
            client.tls_set(
                ca_certs=str(self.cfg.ca_file) if self.cfg.ca_file else None,
                certfile=str(self.cfg.cert_file) if self.cfg.cert_file else None,
                keyfile=str(self.cfg.key_file) if self.cfg.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_paho_message
        return client

    # --- the link thread -----------------------------------------------------------------------

    def _run(self) -> None:
        delays: Iterator[float] | None = None  # None: connect now (first start); afterwards every attempt waits its backoff
        while not self._stop.is_set():
            if not self._transport:
                if delays is not None and self._stop.wait(next(delays)):
                    break
                if delays is None:
                    delays = backoff_delays(self.cfg.reconnect_min_s, self.cfg.reconnect_max_s, self._rng)
                if not self._open():
                    continue
            rc = self.client.loop(timeout=0.1)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._lost(f"connection lost ({paho.error_string(rc)})")
                continue
            if not self.connected:
                if time.monotonic() > self._connack_deadline:
                    self._lost(f"no CONNACK from {self.cfg.host}:{self.cfg.port} within {CONNACK_TIMEOUT_S:.0f} s")
                continue
            delays = backoff_delays(self.cfg.reconnect_min_s, self.cfg.reconnect_max_s, self._rng)  # reset after a success
            self._flush_acks()
            self._apply_ops()
            self._pump()
            self._expire()
        self._shutdown()

    def _open(self) -> bool:
        try:
            self.client.will_set(self.topics.state, self._will("lwt"), qos=QOS, retain=True)
            if self.cfg.protocol == "5":
                props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho leaves it unannotated
                props.SessionExpiryInterval = 24 * 3600
                self.client.connect(self.cfg.host, self.cfg.port, self.cfg.keepalive_s, clean_start=False, properties=props)
            else:
                self.client.connect(self.cfg.host, self.cfg.port, self.cfg.keepalive_s)
        except (OSError, ssl.SSLError, ValueError) as e:
            self._fail(f"cannot connect to {self.cfg.host}:{self.cfg.port}: {e}")
            return False
        self._transport = True
        self._connack_deadline = time.monotonic() + CONNACK_TIMEOUT_S
        return True

    def _lost(self, why: str) -> None:
        if self.connected:
            log.warning("MQTT: %s; reconnecting with backoff", why)
        self._fail(why)
        self.connected = False
        self._transport = False
        try:
            self.client.disconnect()
        except Exception:  # the socket is already gone
            pass

    def _fail(self, why: str) -> None:
        if why != self.last_error:
            log.warning("MQTT: %s", why)
        self.last_error = why

    def _pump(self) -> None:
        room = self.cfg.max_inflight - len(self._inflight)
        if room <= 0:
            return
        for m in self.outbox.peek(room, after_id=self._last_sent_id):
            info = self.client.publish(m.topic, m.payload, qos=QOS, retain=m.retain)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
            self._inflight[info.mid] = m.id
            self._last_sent_id = m.id

    def _flush_acks(self) -> None:
        if self._acks:
            acks, self._acks = self._acks, []
            self.outbox.ack(acks)
            self.acked += len(acks)

    def _expire(self) -> None:
        now = time.monotonic()
        if now >= self._next_expire:
            self._next_expire = now + EXPIRE_EVERY_S
            expired = self.outbox.expire()
            if expired:
                log.warning("MQTT: %d undelivered message(s) passed [outbox] max_age_s and were dropped", expired)

    def _shutdown(self) -> None:
        if self.connected:
            try:
                info = self.client.publish(self.topics.state, self._will("shutdown"), qos=QOS, retain=True)
                deadline = time.monotonic() + 2.0
                while not info.is_published() and time.monotonic() < deadline:
                    if self.client.loop(timeout=0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                        break
                self._flush_acks()
                self.client.disconnect()
                self.client.loop(timeout=0.05)
            except Exception as e:  # shutting down: report, don't raise
                log.warning("MQTT: clean disconnect failed: %s", e)
        self._flush_acks()
        self.connected = False
        self._transport = False
        try:
            self.client.socket() and self.client.disconnect()
        except Exception:
            pass

    # --- paho callbacks (run on the link thread, inside client.loop) --------------------------

    def _on_connect(self, client: paho.Client, userdata: object, flags: paho.ConnectFlags, reason_code: ReasonCode,
                    properties: Properties | None) -> None:
        if reason_code.is_failure:
            self._fail(f"broker {self.cfg.host}:{self.cfg.port} refused the connection: {reason_code}")
            self.connected = False
            self._transport = False
            client.disconnect()
            return
        self.connected = True
        self.connects += 1
        self.last_error = None
        log.info("MQTT: connected to %s:%s as %s", self.cfg.host, self.cfg.port, self.topics.device)
        with self._ops_lock:
            extra = sorted(self._extra)
            self._sub_ops = []
        for topic in (*self.topics.subscriptions(), *extra):
            client.subscribe(topic, qos=QOS)
        self._state_dirty = False
        client.publish(self.topics.state, self._birth(), qos=QOS, retain=True)

    def _on_disconnect(self, client: paho.Client, userdata: object, flags: paho.DisconnectFlags, reason_code: ReasonCode,
                       properties: Properties | None) -> None:
        self.connected = False
        self._transport = False

    def _on_publish(self, client: paho.Client, userdata: object, mid: int, reason_code: ReasonCode,
                    properties: Properties) -> None:
        row = self._inflight.pop(mid, None)
        if row is not None:
            self._acks.append(row)

    def _on_paho_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        if self._on_message is None:
            return
        try:
            self._on_message(msg.topic, bytes(msg.payload))
        except Exception:
            log.exception("MQTT: the handler for a message on %s failed", msg.topic)
