"""The fleet collector (``edgekit fleet watch``): MQTT in, store and alerts out.

::

    with Collector("mqtt://127.0.0.1:1883", "fleet.sqlite") as c:   # starts a background thread
        c.register("out/")                                          # judge this model version
        c.wait_ready(10)
        ...                                                         # c.alerts holds what it raised

Subscriptions (QoS 1):

- telemetry through the shared subscription ``$share/<share>/<prefix>/+/telemetry``: start more
  collectors with the same ``share`` and the broker splits the windows between them;
- device states (retained; groups come from them) and deploy commands (the manifests they carry
  become drift references) without sharing: every collector needs all of them, and the broker
  does not hand retained messages to shared subscriptions;
- drift queries from ``fleet drift --broker`` (:mod:`edgekit.monitor.query`).

The broker hands each telemetry window to one collector of the share. With a store of its own,
each collector judges its share of every device's windows — a random subsample, so still a valid
test, on fewer samples — and ``fleet drift --broker`` adds the shares up. Collectors on one machine
can share one database file and then judge the whole history.

Messages are acknowledged after they are stored (paho manual acks), so a collector that dies
between receipt and storage gets them again. Alerts go to ``<prefix>/fleet/alerts/<scope>/<name>``,
and each device's drift summary (the ``fleet status`` column) is kept retained on
``<prefix>/fleet/drift/<device>``.
The presence of each collector is a retained message with a Last Will, so ``fleet drift`` knows
whom to wait for.
"""

from __future__ import annotations

import json
import logging
import queue
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from device_agent.contract.manifest import load_manifest
from device_agent.contract.protocol import DEFAULT_PREFIX, QOS, Topics, shared, valid_id
from edgekit.errors import InputError, OtaError
from edgekit.monitor.monitor import Monitor, MonitorConfig, drift_summary
from edgekit.monitor.query import answer
from edgekit.monitor.store import FleetStore, Reference, SqliteStore

__all__ = ["BrokerAddress", "Collector", "check_reachable", "connect_client", "parse_broker_url"]

log = logging.getLogger("edgekit.monitor.collector")

#: messages waiting for the worker; past this the MQTT thread blocks (and the broker holds the rest)
QUEUE_SIZE = 10_000


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


def parse_broker_url(url: str, *, username: str | None = None, password: str | None = None, ca_file: str | Path | None = None,
                     cert_file: str | Path | None = None, key_file: str | Path | None = None) -> BrokerAddress:
    """``mqtt://host[:1883]`` or ``mqtts://host[:8883]``; raises InputError naming what is wrong."""
    u = urlsplit(url)
    if u.scheme not in ("mqtt", "mqtts"):
        raise InputError(f"broker URL {url!r} has scheme {u.scheme!r}; allowed: mqtt, mqtts (e.g. mqtt://127.0.0.1:1883)")
    if not u.hostname:
        raise InputError(f"broker URL {url!r} has no host (e.g. mqtt://127.0.0.1:1883)")
    try:
        port = u.port or (8883 if u.scheme == "mqtts" else 1883)
    except ValueError:
        raise InputError(f"broker URL {url!r} has an invalid port") from None
    if bool(cert_file) != bool(key_file):
        raise InputError("a client certificate and its key go together: give both --cert-file and --client-key, or neither")
    return BrokerAddress(u.hostname, port, u.scheme == "mqtts", username or u.username, password or u.password,
                         str(ca_file) if ca_file else None, str(cert_file) if cert_file else None, str(key_file) if key_file else None)


def connect_client(address: BrokerAddress, client_id: str, *, clean: bool = True, will: tuple[str, bytes] | None = None) -> Any:
    """A configured (not yet connected) paho 2 client for ``address``."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean, protocol=paho.MQTTv311)
    client.reconnect_delay_set(0.2, 10)
    if address.username:
        client.username_pw_set(address.username, address.password)
    if address.tls:
        client.tls_set(ca_certs=address.ca_file, certfile=address.cert_file, keyfile=address.key_file, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    if will:
        client.will_set(will[0], will[1], qos=QOS, retain=True)
    return client


class Collector:
    """Consumes fleet telemetry from one broker on background threads.

    Args:
        broker: ``mqtt://`` / ``mqtts://`` URL.
        store: a :class:`FleetStore`, or the path of the SQLite file (``":memory:"`` works).
        config: monitor thresholds and windows.
        share: the shared-subscription group; collectors with the same share split the telemetry.
            None subscribes plainly (one collector only; for brokers without shared subscriptions).
        prefix: the fleet's topic prefix.
        collector_id: MQTT client id. Given, the broker keeps this collector's session (and queues its
            share of the telemetry) while it restarts; default: a random id and a clean session.
        username, password, ca_file, cert_file, key_file: broker credentials, CA and client certificate for mqtts.
        on_alert: called with each alert payload (on the worker thread) after it is published.
        trusted_keys: ed25519 public keys (PEM); given, only signed manifests from deploy commands
            become references.
    """

    def __init__(self, broker: str, store: FleetStore | str | Path, *, config: MonitorConfig | None = None, share: str | None = "edgekit-monitor",
                 prefix: str = DEFAULT_PREFIX, collector_id: str | None = None, username: str | None = None, password: str | None = None,
                 ca_file: str | Path | None = None, cert_file: str | Path | None = None, key_file: str | Path | None = None,
                 on_alert: Callable[[dict[str, Any]], None] | None = None, trusted_keys: list[str | Path] | None = None) -> None:
        if share is not None and not valid_id(share):
            raise InputError(f"share group {share!r} is not usable in a topic: use 1-64 of A-Z a-z 0-9 _ . -")
        self._stable_id = collector_id is not None
        self.id = collector_id or f"watch-{uuid.uuid4().hex[:8]}"
        if not valid_id(self.id):
            raise InputError(f"collector id {self.id!r} is not usable in a topic: use 1-64 of A-Z a-z 0-9 _ . -")
        self.address = parse_broker_url(broker, username=username, password=password, ca_file=ca_file, cert_file=cert_file, key_file=key_file)
        self.store: FleetStore = store if not isinstance(store, (str, Path)) else SqliteStore(store)
        self._own_store = isinstance(store, (str, Path))
        trusted = None
        if trusted_keys:
            from device_agent.ota.verify import load_trusted_keys

            trusted = load_trusted_keys(trusted_keys)
        self.monitor = Monitor(self.store, config, collector=self.id, trusted=trusted)
        self.share = share
        self.prefix = prefix
        self.on_alert = on_alert
        self.alerts: list[dict[str, Any]] = []
        self.errors = 0
        self._queue: queue.Queue[Any] = queue.Queue(QUEUE_SIZE)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._worker: threading.Thread | None = None
        self._pending_subs: set[int] = set()
        self._client: Any = None
        self._summaries: dict[str, str] = {}

    # --- references ----------------------------------------------------------------------------------

    def register(self, model_dir: str | Path) -> Reference:
        """Judge the model in ``model_dir`` (its ``edgekit.json``) against its drift profile and accuracy."""
        return self.monitor.register(load_manifest(model_dir), source=str(model_dir))

    # --- lifecycle -------------------------------------------------------------------------------------

    @property
    def topics(self) -> dict[str, tuple[str, ...]]:
        # share=None: a plain subscription, for brokers without MQTT 5 shared subscriptions (amqtt)
        telemetry = Topics.all_telemetry(self.prefix) if self.share is None else shared(self.share, Topics.all_telemetry(self.prefix))
        return {"shared": (telemetry,),
                "own": (Topics.all_states(self.prefix), *Topics.all_cmds(self.prefix), Topics.fleet_query(self.prefix))}

    def start(self) -> Collector:
        """Connect (asynchronously) and start consuming; see :meth:`wait_ready`."""
        if self._client is not None:
            return self
        presence = Topics.fleet_collector(self.id, self.prefix)
        # a persistent session only under a stable, chosen id: a random id's session would outlive the
        # process and keep taking its turn of the shared telemetry into a queue nobody reads
        self._client = connect_client(self.address, self.id, clean=not self._stable_id, will=(presence, self._presence("offline")))
        self._client.manual_ack_set(True)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.on_disconnect = lambda *a: self._ready.clear()
        self._worker = threading.Thread(target=self._work, name=f"edgekit-collector-{self.id}", daemon=True)
        self._worker.start()
        self._client.connect_async(self.address.host, self.address.port, keepalive=30)
        self._client.loop_start()
        return self

    def wait_ready(self, timeout: float = 10.0) -> bool:
        """True once connected and subscribed (within ``timeout`` seconds)."""
        return self._ready.wait(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Finish the queued messages (bounded by ``timeout``), mark this collector offline, disconnect."""
        if self._client is None:
            return
        deadline = time.monotonic() + timeout
        while not self._queue.empty() and time.monotonic() < deadline:
            time.sleep(0.01)
        self._stop.set()
        if self._worker is not None:
            self._worker.join(max(0.1, deadline - time.monotonic()))
        try:
            info = self._client.publish(Topics.fleet_collector(self.id, self.prefix), self._presence("offline"), qos=QOS, retain=True)
            info.wait_for_publish(max(0.1, min(2.0, deadline - time.monotonic())))
        except (RuntimeError, ValueError):
            pass  # not connected: the Last Will says it
        self._client.disconnect()
        self._client.loop_stop()
        self._client = None
        if self._own_store:
            self.store.close()

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _presence(self, status: str) -> bytes:
        return json.dumps({"v": 1, "type": "collector", "collector": self.id, "status": status, "share": self.share,
                           "ts": round(time.time(), 3)}).encode()

    # --- MQTT callbacks (paho's thread) ------------------------------------------------------------------

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            log.warning("collector %s: broker refused the connection: %s", self.id, reason_code)
            return
        client.publish(Topics.fleet_collector(self.id, self.prefix), self._presence("online"), qos=QOS, retain=True)
        topics = [*self.topics["shared"], *self.topics["own"]]
        result, mid = client.subscribe([(t, QOS) for t in topics])
        self._pending_subs.add(mid)

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        failed = [str(rc) for rc in reason_codes if rc.is_failure]
        if failed:
            log.error("collector %s: the broker refused a subscription (%s); does it support shared subscriptions?", self.id, ", ".join(failed))
            return
        self._pending_subs.discard(mid)
        if not self._pending_subs:
            self._ready.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        # bounded: when the worker falls behind, paho's thread waits here and the broker keeps the rest
        while not self._stop.is_set():
            try:
                self._queue.put((msg.topic, bytes(msg.payload), msg.mid, msg.qos), timeout=0.5)
                return
            except queue.Full:
                continue

    # --- worker ----------------------------------------------------------------------------------------

    def _work(self) -> None:
        query_topic = Topics.fleet_query(self.prefix)
        last_prune = 0.0
        while not self._stop.is_set():
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                item = None
            try:
                if item is not None:
                    topic, payload, mid, qos = item
                    if topic == query_topic:
                        self._answer(payload)
                    else:
                        self._publish(self.monitor.handle(topic, payload))
                        if topic.endswith("/telemetry"):
                            self._publish_summary(topic.split("/")[-2])
                    if qos and self._client is not None:
                        self._client.ack(mid, qos)
                self._publish(self.monitor.evaluate_groups())
                if time.monotonic() - last_prune > 3600:
                    last_prune = time.monotonic()
                    self.monitor.prune()
            except Exception:  # one bad message or a store hiccup must not stop the collector
                self.errors += 1
                log.exception("collector %s: failed to process a message", self.id)

    def _publish(self, alerts: list[dict[str, Any]]) -> None:
        for a in alerts:
            self.alerts.append(a)
            if self._client is not None:
                self._client.publish(Topics.fleet_alert(a["scope"], a["name"], self.prefix), json.dumps(a).encode(), qos=QOS)
            log.warning("%s", a.get("message"))
            if self.on_alert is not None:
                self.on_alert(a)

    def _publish_summary(self, device: str) -> None:
        """Keep the retained drift summary of ``device`` current (only when its text changes)."""
        summary = drift_summary(self.store, device)
        if summary is None or self._client is None or self._summaries.get(device) == summary["text"]:
            return
        self._summaries[device] = summary["text"]
        self._client.publish(Topics.fleet_drift(device, self.prefix), json.dumps({"device": device, **summary}).encode(), qos=QOS, retain=True)

    def _answer(self, payload: bytes) -> None:
        try:
            q = json.loads(payload)
            reply = q["reply"]
            if not isinstance(reply, str) or not reply.startswith(f"{self.prefix}/fleet/monitor/reply/") or any(c in reply for c in "+#"):
                raise ValueError(f"reply topic {reply!r} is not under {self.prefix}/fleet/monitor/reply/")
        except (ValueError, KeyError, TypeError) as e:
            log.warning("collector %s: ignoring a malformed drift query: %s", self.id, e)
            return
        if self._client is not None:
            self._client.publish(reply, json.dumps(answer(self.store, q, collector=self.id)).encode(), qos=QOS)


def check_reachable(address: BrokerAddress, timeout: float = 5.0) -> None:
    """Fail fast, with the address, when nothing listens there (paho would retry quietly forever)."""
    import socket

    try:
        with socket.create_connection((address.host, address.port), timeout=timeout):
            return
    except OSError as e:
        raise OtaError(f"cannot reach the broker at {address.host}:{address.port}: {e}; is it running? (--broker)") from None
