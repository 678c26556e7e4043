"""The fleet collector (``edgekit fleet watch``): MQTT in, store and alerts out.

::

    with Collector("mqtt://127.0.0.1:1883", "fleet.sqlite") as c:   # starts its threads
        c.register("out/")                                          # judge this model version
        c.wait_ready(10)
        ...                                                         # c.alerts holds what it raised

Subscriptions (QoS 1):

- telemetry through the shared subscription ``$share/<share>/<prefix>/+/telemetry``: start more
  collectors with the same ``share`` and the broker splits the windows between them;
- device states (retained; groups come from them), job states (retained), rollouts that
  ``fleet deploy`` published and deploy commands (the manifests they carry become drift
  references) without sharing: every collector needs all of them, and the broker does not hand
  retained messages to shared subscriptions;
- drift and status queries from ``fleet drift --broker`` / ``fleet status --broker``
  (:mod:`edgekit.monitor.query`, :mod:`edgekit.monitor.status`).

The broker hands each telemetry window to one collector of the share. With a store of its own,
each collector judges its share of every device's windows — a random subsample, so still a valid
test, on fewer samples — and ``fleet drift --broker`` adds the shares up. Collectors that share one
database (a SQLite file on one machine, or PostgreSQL across hosts) store every window once and
keep one set of running totals (each under its own writer slot), and queries ask one of them.

The work runs on four threads (:mod:`edgekit.monitor.workers`): ingestion files whatever is
waiting in one transaction and acknowledges the messages after they are stored (paho manual acks),
so a collector that dies between receipt and storage gets them again; judging, answering queries
and retention never hold it up. Alerts go to ``<prefix>/fleet/alerts/<scope>/<name>``, and each
device's drift summary is kept retained on ``<prefix>/fleet/drift/<device>`` when it changes.
The presence of each collector is a retained message with a Last Will (naming the store it writes),
so queries know whom to ask. :meth:`Collector.serve_metrics` serves ``/metrics`` for Prometheus
(:mod:`edgekit.monitor.metrics`, read from the store when scraped).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from device_agent.contract.manifest import load_manifest
from device_agent.contract.protocol import DEFAULT_PREFIX, Topics, shared, valid_id
from edgekit.errors import InputError
from edgekit.fleet.mqtt import BrokerAddress, BrokerSession, Received, rollout_topic, to_address
from edgekit.monitor.asking import parts_of
from edgekit.monitor.config import MonitorConfig
from edgekit.monitor.metrics import FleetMetrics, MetricsServer, serve_metrics
from edgekit.monitor.monitor import Monitor
from edgekit.monitor.query import answer
from edgekit.monitor.status import status_answer
from edgekit.monitor.store import FleetStore, Reference, open_store
from edgekit.monitor.workers import Workers

__all__ = ["Collector"]

log = logging.getLogger("edgekit.monitor.collector")


class Collector:
    """Consumes fleet telemetry from one broker on background threads.

    Args:
        broker: ``mqtt://`` / ``mqtts://`` URL, or an address with credentials, CA and client
            certificate (:func:`edgekit.fleet.mqtt.parse_broker_url`).
        store: a :class:`FleetStore`, a SQLite file (``":memory:"`` works) or a ``postgresql://`` URL.
        config: monitor thresholds, windows and retention.
        share: the shared-subscription group; collectors with the same share split the telemetry.
            None subscribes plainly (one collector only; for brokers without shared subscriptions).
        prefix: the fleet's topic prefix.
        collector_id: MQTT client id. Given, the broker keeps this collector's session (and queues its
            share of the telemetry) while it restarts; default: a random id and a clean session.
        on_alert: called with each alert payload (on the judging thread) after it is published.
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
        self._own_store = isinstance(store, (str, Path))
        self.store: FleetStore = open_store(store, holder=f"{self.id}/{uuid.uuid4().hex[:8]}") if isinstance(store, (str, Path)) else store
        trusted = None
        if trusted_keys:
            from device_agent.ota.verify import load_trusted_keys

            trusted = load_trusted_keys(trusted_keys)
        self.monitor = Monitor(self.store, config, collector=self.id, trusted=trusted)
        self.monitor.evaluator.verdicts.on_summary = self._publish_summary
        self.share = share
        self.prefix = prefix
        self.on_alert = on_alert
        self.alerts: list[dict[str, Any]] = []
        self.workers = Workers(self.monitor, ack=self._ack, publish=self._publish, answer=self._answer, route=self._route, name=self.id)
        self._session: BrokerSession | None = None
        self._metrics: MetricsServer | None = None

    @property
    def errors(self) -> int:
        """Failures the threads recovered from (logged)."""
        return self.workers.errors

    # --- references ----------------------------------------------------------------------------------

    def register(self, model_dir: str | Path) -> Reference:
        """Judge the model in ``model_dir`` (its ``edgekit.json``) against its drift profile and accuracy."""
        return self.monitor.register(load_manifest(model_dir), source=str(model_dir))

    # --- /metrics -------------------------------------------------------------------------------------

    def metrics(self) -> FleetMetrics:
        """This collector's Prometheus metrics: its store's fleet, and its own counters (:mod:`edgekit.monitor.metrics`)."""
        return FleetMetrics(self.store, collector=self.id, stats=lambda: dict(self.monitor.stats), process=self._process)

    def serve_metrics(self, port: int, *, host: str = "127.0.0.1") -> MetricsServer:
        """Serve :meth:`metrics` on ``http://host:port/metrics`` until :meth:`stop` (port 0: a free one)."""
        if self._metrics is None:
            self._metrics = serve_metrics(self.metrics(), port=port, host=host)
        return self._metrics

    def _process(self) -> dict[str, float]:
        p50, p99 = self.workers.lag()
        return {"errors": self.errors, "inbox": self.workers.inbox.qsize(), "lag_p50_s": p50, "lag_p99_s": p99}

    # --- lifecycle -------------------------------------------------------------------------------------

    @property
    def topics(self) -> dict[str, tuple[str, ...]]:
        """The telemetry subscription (shared between collectors) and this collector's own ones."""
        # share=None: a plain subscription, for brokers without MQTT 5 shared subscriptions (amqtt)
        telemetry = Topics.all_telemetry(self.prefix) if self.share is None else shared(self.share, Topics.all_telemetry(self.prefix))
        return {"shared": (telemetry,),
                "own": (Topics.all_states(self.prefix), Topics.all_jobs(self.prefix), *Topics.all_cmds(self.prefix),
                        rollout_topic(prefix=self.prefix), Topics.fleet_query(self.prefix))}

    def start(self) -> Collector:
        """Connect (in the background, reconnecting) and start consuming; see :meth:`wait_ready`."""
        if self._session is not None:
            return self
        presence = Topics.fleet_collector(self.id, self.prefix)
        # a persistent session only under a stable, chosen id: a random id's session would outlive the
        # process and keep taking its turn of the shared telemetry into a queue nobody reads;
        # messages are acknowledged after they are stored, so a collector that dies in between gets them again
        self._session = BrokerSession(self.address, self.id, topics=(*self.topics["shared"], *self.topics["own"]),
                                      on_message=self.workers.offer, on_connect=self._announce, clean=not self._stable_id,
                                      will=(presence, self._presence("offline")), manual_ack=True)
        self.workers.start()
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
        """Finish what is queued (bounded by ``timeout``), mark this collector offline, disconnect."""
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        session = self._session
        if session is None:
            return
        deadline = time.monotonic() + timeout
        self.workers.drain(timeout)
        self.workers.join(max(0.1, deadline - time.monotonic()))
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
                           "store": self.store.store_id, "ts": round(time.time(), 3)}).encode()

    # --- MQTT (paho's thread, and the workers') --------------------------------------------------------------

    def _announce(self) -> None:
        if self._session is not None:
            self._session.publish(Topics.fleet_collector(self.id, self.prefix), self._presence("online"), retain=True)

    def _route(self, topic: str) -> str:
        if topic == Topics.fleet_query(self.prefix):
            return "query"
        if topic.startswith(rollout_topic("", self.prefix)):
            return "rollout"
        return "message"

    def _ack(self, msg: Received) -> None:
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

    def _publish_summary(self, device: str, summary: dict[str, Any]) -> None:
        """Keep the retained drift summary of ``device`` current (called when it changed)."""
        if self._session is not None:
            self._session.publish(Topics.fleet_drift(device, self.prefix), json.dumps({"device": device, **summary}).encode(), retain=True)

    def _answer(self, msg: Received) -> None:
        try:
            q = json.loads(msg.payload)
            reply = q["reply"]
            if not isinstance(reply, str) or not reply.startswith(f"{self.prefix}/fleet/monitor/reply/") or any(c in reply for c in "+#"):
                raise ValueError(f"reply topic {reply!r} is not under {self.prefix}/fleet/monitor/reply/")
        except (ValueError, KeyError, TypeError) as e:
            log.warning("collector %s: ignoring a malformed query: %s", self.id, e)
            return
        to = q.get("to")
        if isinstance(to, list) and self.id not in to:
            return  # another collector of this store answers
        if q.get("type") == "status_query":
            doc = status_answer(self.store, q, collector=self.id)
        else:
            doc = answer(self.store, q, collector=self.id)
        if self._session is not None:
            size = q.get("parts")
            # in parts when asked (edgekit.monitor.asking): brokers cap a message's size, a 10,000-device answer is ~5 MB
            for part in parts_of(doc, size) if isinstance(size, int) and not isinstance(size, bool) and size > 0 else [doc]:
                self._session.publish(reply, orjson.dumps(part))
