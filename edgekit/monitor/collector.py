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
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from device_agent.contract.manifest import load_manifest
from device_agent.contract.protocol import DEFAULT_PREFIX, Topics, shared, valid_id
from edgekit.errors import InputError
from edgekit.fleet.mqtt import BrokerAddress, BrokerSession, Received, to_address
from edgekit.monitor.config import MonitorConfig
from edgekit.monitor.monitor import Monitor
from edgekit.monitor.query import answer
from edgekit.monitor.reports import drift_summary
from edgekit.monitor.store import FleetStore, Reference, SqliteStore

__all__ = ["Collector"]

log = logging.getLogger("edgekit.monitor.collector")

#: messages waiting for the worker; past this the MQTT thread blocks (and the broker holds the rest)
QUEUE_SIZE = 10_000


class Collector:
    """Consumes fleet telemetry from one broker on background threads.

    Args:
        broker: ``mqtt://`` / ``mqtts://`` URL, or an address with credentials, CA and client
            certificate (:func:`edgekit.fleet.mqtt.parse_broker_url`).
        store: a :class:`FleetStore`, or the path of the SQLite file (``":memory:"`` works).
        config: monitor thresholds and windows.
        share: the shared-subscription group; collectors with the same share split the telemetry.
            None subscribes plainly (one collector only; for brokers without shared subscriptions).
        prefix: the fleet's topic prefix.
        collector_id: MQTT client id. Given, the broker keeps this collector's session (and queues its
            share of the telemetry) while it restarts; default: a random id and a clean session.
        on_alert: called with each alert payload (on the worker thread) after it is published.
        trusted_keys: ed25519 public keys (PEM); given, only signed manifests from deploy commands
            become references.
    """

    def __init__(self, broker: str | BrokerAddress, store: FleetStore | str | Path, *, config: MonitorConfig | None = None,
                 share: str | None = "edgekit-monitor", prefix: str = DEFAULT_PREFIX, collector_id: str | None = None,
                 on_alert: Callable[[dict[str, Any]], None] | None = None, trusted_keys: list[str | Path] | None = None) -> None:
        if share is not None and not valid_id(share):
            raise InputError(f"share group {share!r} is not usable in a topic: use 1-64 of A-Z a-z 0-9 _ . -")
        self._stable_id = collector_id is not None
        self.id = collector_id or f"watch-{uuid.uuid4().hex[:8]}"
        if not valid_id(self.id):
            raise InputError(f"collector id {self.id!r} is not usable in a topic: use 1-64 of A-Z a-z 0-9 _ . -")
        self.address = to_address(broker)
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
        self._queue: queue.Queue[Received] = queue.Queue(QUEUE_SIZE)
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._session: BrokerSession | None = None
        self._summaries: dict[str, str] = {}

    # --- references ----------------------------------------------------------------------------------

    def register(self, model_dir: str | Path) -> Reference:
        """Judge the model in ``model_dir`` (its ``edgekit.json``) against its drift profile and accuracy."""
        return self.monitor.register(load_manifest(model_dir), source=str(model_dir))

    # --- lifecycle -------------------------------------------------------------------------------------

    @property
    def topics(self) -> dict[str, tuple[str, ...]]:
        """The telemetry subscription (shared between collectors) and this collector's own ones."""
        # share=None: a plain subscription, for brokers without MQTT 5 shared subscriptions (amqtt)
        telemetry = Topics.all_telemetry(self.prefix) if self.share is None else shared(self.share, Topics.all_telemetry(self.prefix))
        return {"shared": (telemetry,),
                "own": (Topics.all_states(self.prefix), *Topics.all_cmds(self.prefix), Topics.fleet_query(self.prefix))}

    def start(self) -> Collector:
        """Connect (in the background, reconnecting) and start consuming; see :meth:`wait_ready`."""
        if self._session is not None:
            return self
        presence = Topics.fleet_collector(self.id, self.prefix)
        # a persistent session only under a stable, chosen id: a random id's session would outlive the
        # process and keep taking its turn of the shared telemetry into a queue nobody reads;
        # messages are acknowledged after they are stored, so a collector that dies in between gets them again
        self._session = BrokerSession(self.address, self.id, topics=(*self.topics["shared"], *self.topics["own"]),
                                      on_message=self._on_message, on_connect=self._announce, clean=not self._stable_id,
                                      will=(presence, self._presence("offline")), manual_ack=True)
        self._worker = threading.Thread(target=self._work, name=f"edgekit-collector-{self.id}", daemon=True)
        self._worker.start()
        self._session.start()
        return self

    def wait_ready(self, timeout: float = 10.0) -> bool:
        """True once connected and subscribed (within ``timeout`` seconds; False at once when the broker refuses)."""
        return self._session is not None and self._session.wait_ready(timeout)

    @property
    def refusal(self) -> str | None:
        """Why the broker refused this collector's connection or subscriptions (None: it did not)."""
        return self._session.refusal if self._session is not None else None

    def stop(self, timeout: float = 5.0) -> None:
        """Finish the queued messages (bounded by ``timeout``), mark this collector offline, disconnect."""
        session = self._session
        if session is None:
            return
        deadline = time.monotonic() + timeout
        while not self._queue.empty() and time.monotonic() < deadline:
            time.sleep(0.01)
        self._stop.set()
        if self._worker is not None:
            self._worker.join(max(0.1, deadline - time.monotonic()))
        try:
            info = session.publish(Topics.fleet_collector(self.id, self.prefix), self._presence("offline"), retain=True)
            info.wait_for_publish(max(0.1, min(2.0, deadline - time.monotonic())))
        except (RuntimeError, ValueError):
            pass  # not connected: the Last Will says it
        session.close()
        self._session = None
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

    def _announce(self) -> None:
        if self._session is not None:
            self._session.publish(Topics.fleet_collector(self.id, self.prefix), self._presence("online"), retain=True)

    def _on_message(self, msg: Received) -> None:
        # bounded: when the worker falls behind, paho's thread waits here and the broker keeps the rest
        while not self._stop.is_set():
            try:
                self._queue.put(msg, timeout=0.5)
                return
            except queue.Full:
                continue

    # --- worker ----------------------------------------------------------------------------------------

    def _work(self) -> None:
        last_prune = 0.0
        while not self._stop.is_set():
            try:
                msg: Received | None = self._queue.get(timeout=0.2)
            except queue.Empty:
                msg = None
            try:
                if msg is not None:
                    self._take(msg)
                self._publish(self.monitor.evaluate_groups())
                if time.monotonic() - last_prune > 3600:
                    last_prune = time.monotonic()
                    self.monitor.prune()
            except Exception:  # one bad message or a store hiccup must not stop the collector
                self.errors += 1
                log.exception("collector %s: failed to process a message", self.id)

    def _take(self, msg: Received) -> None:
        if msg.topic == Topics.fleet_query(self.prefix):
            self._answer(msg.payload)
        else:
            self._publish(self.monitor.handle(msg.topic, msg.payload))
            if msg.topic.endswith("/telemetry"):
                self._publish_summary(msg.topic.split("/")[-2])
        if self._session is not None:
            self._session.ack(msg.mid, msg.qos)

    def _publish(self, alerts: list[dict[str, Any]]) -> None:
        for a in alerts:
            self.alerts.append(a)
            if self._session is not None:
                self._session.publish(Topics.fleet_alert(a["scope"], a["name"], self.prefix), json.dumps(a).encode())
            log.warning("%s", a.get("message"))
            if self.on_alert is not None:
                self.on_alert(a)

    def _publish_summary(self, device: str) -> None:
        """Keep the retained drift summary of ``device`` current (only when its text changes)."""
        summary = drift_summary(self.store, device)
        if summary is None or self._session is None or self._summaries.get(device) == summary["text"]:
            return
        self._summaries[device] = summary["text"]
        self._session.publish(Topics.fleet_drift(device, self.prefix), json.dumps({"device": device, **summary}).encode(), retain=True)

    def _answer(self, payload: bytes) -> None:
        try:
            q = json.loads(payload)
            reply = q["reply"]
            if not isinstance(reply, str) or not reply.startswith(f"{self.prefix}/fleet/monitor/reply/") or any(c in reply for c in "+#"):
                raise ValueError(f"reply topic {reply!r} is not under {self.prefix}/fleet/monitor/reply/")
        except (ValueError, KeyError, TypeError) as e:
            log.warning("collector %s: ignoring a malformed drift query: %s", self.id, e)
            return
        if self._session is not None:
            self._session.publish(reply, json.dumps(answer(self.store, q, collector=self.id)).encode())
