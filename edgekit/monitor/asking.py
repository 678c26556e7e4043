"""Asking the running collectors over MQTT: one online collector per store, and their answers as they arrive.

The machinery under ``fleet drift --broker`` (:mod:`edgekit.monitor.query`) and ``fleet status --broker``
(:mod:`edgekit.monitor.status`), apart from what either asks: a query is sent to the collectors whose
retained presence says they are online (one per store they name), and the answers on the query's own
reply topic are gathered until every one asked has answered or the time is up. Light on purpose: asking
for the devices page needs neither numpy's drift statistics nor pydantic.

Answers in parts: a query says ``"parts": n`` and a collector that knows it splits its answer's list (a
status answer's ``rows``, a drift answer's ``sets``) into messages of at most ``n`` items, each with
``"part": i, "parts": k`` and the answer's envelope (``v``, ``type``, ``id``, ``collector``, ``store``,
``total``, ``offset``); the first part also carries the rest (``layouts``, ``references``, ``accuracy``).
A 10,000-device answer is ~5 MB in one message, more than brokers take by default (EMQX: 1 MB), and the
asking side parses a part while the next is on its way. An answer counts once all its parts are in (a
collector whose parts did not all arrive in time is reported as not answering); a collector of an earlier
release ignores ``parts`` and answers in one message, read as before.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import orjson

from device_agent.contract.protocol import DEFAULT_PREFIX, Topics
from edgekit.errors import FleetError

if TYPE_CHECKING:
    from edgekit.fleet.mqtt import BrokerAddress, BrokerSession, Received

__all__ = ["PART_ITEMS", "Marker", "NoCollector", "ask", "one_per_store", "parts_of"]

#: items (devices' rows, drift sets) per part of an answer: ~250 KB of rows, ~600 KB of sets of eight features
PART_ITEMS = 500
#: the list an answer of each type is split along
SPLIT = {"status_reply": "rows", "drift_reply": "sets"}
_ENVELOPE = ("v", "type", "id", "collector", "store", "total", "offset")

#: at most this long for the retained presence of the collectors (the marker ends it as soon as it is all in)
PRESENCE_S = 0.3


class NoCollector(FleetError):
    """The broker answers, but no fleet collector is online there."""


def one_per_store(answers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The answers, keeping one of those from collectors that share a database (answers naming no store all count)."""
    seen: set[str] = set()
    out = []
    for a in answers:
        store = a.get("store")
        if isinstance(store, str):
            if store in seen:
                continue
            seen.add(store)
        out.append(a)
    return out


def parts_of(doc: dict[str, Any], size: int) -> list[dict[str, Any]]:
    """The answer ``doc`` as the messages of a query that asked for parts of at most ``size`` items (see the module docs)."""
    field = SPLIT[doc["type"]]
    items = doc[field]
    n = max(1, -(-len(items) // size))
    out = []
    for i in range(n):
        part = dict(doc) if i == 0 else {k: doc[k] for k in _ENVELOPE if k in doc}
        part.update({field: items[i * size:(i + 1) * size], "part": i, "parts": n})
        out.append(part)
    return out


def _joined(parts: dict[int, dict[str, Any]], field: str) -> dict[str, Any]:
    """The answer whose parts (by index, all of them) these are: the first part's fields, the split list whole."""
    doc = dict(parts[0])
    doc[field] = [x for i in range(len(parts)) for x in parts[i].get(field, [])]
    for k in ("part", "parts"):
        doc.pop(k, None)
    return doc


class Marker:
    """The end of what a broker sends a session on subscribing: the retained messages of its topic filters.

    The broker sends a subscription's retained messages right after its SUBACK, ahead of anything the client
    publishes later; a marker the session publishes on a topic it subscribes to comes back behind all of them.
    Waiting for it replaces a guessed pause: one collector's presence is in within a millisecond, ten thousand
    retained drift summaries take longer than any fixed wait would allow.

    Args:
        topic: a topic the session subscribes to and may publish on (a reply topic of its own).
    """

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.token = f"edgekit-marker-{uuid.uuid4().hex}".encode()
        self.back = threading.Event()

    def seen(self, msg: Received) -> bool:
        """Whether ``msg`` is this marker (then noted: not a message for the caller)."""
        if msg.topic == self.topic and msg.payload == self.token:
            self.back.set()
            return True
        return False

    def settle(self, session: BrokerSession, timeout: float) -> bool:
        """Publish the marker and wait for it; False after ``timeout`` (a broker that drops it: go on with what arrived)."""
        session.publish(self.topic, self.token)
        return self.back.wait(max(0.0, timeout))


class _Replies:
    """Collector presence and replies as they arrive (paho's thread), awaited by the asking thread."""

    def __init__(self, reply: str, kind: str) -> None:
        self.reply = reply
        self.kind = kind
        self.marker = Marker(reply)
        self.online: dict[str, str | None] = {}  # collector -> the store it writes (None: not said)
        self.answers: dict[str, dict[str, Any]] = {}  # complete answers
        self.partial: dict[str, dict[int, dict[str, Any]]] = {}  # collector -> the parts in so far, by index
        self.changed = threading.Condition()

    def on_message(self, msg: Received) -> None:
        if self.marker.seen(msg):
            return
        try:
            d = orjson.loads(msg.payload) if msg.payload else {}
        except ValueError:
            return
        with self.changed:
            if msg.topic == self.reply and isinstance(d, dict) and d.get("type") == self.kind:
                self._answered(str(d.get("collector")), d)
            elif msg.topic != self.reply and isinstance(d, dict):
                who = msg.topic.rsplit("/", 1)[-1]
                if d.get("status") == "online":
                    self.online[who] = d.get("store") if isinstance(d.get("store"), str) else None
                else:
                    self.online.pop(who, None)
            self.changed.notify_all()

    def _answered(self, who: str, d: dict[str, Any]) -> None:
        """An answer, or one part of it (held until the last is in)."""
        parts, part = d.get("parts"), d.get("part")
        if not isinstance(parts, int) or parts <= 1:
            self.answers[who] = d
            return
        if not isinstance(part, int) or not 0 <= part < parts:
            return
        got = self.partial.setdefault(who, {})
        got[part] = d
        if len(got) == parts:
            self.answers[who] = _joined(self.partial.pop(who), SPLIT[self.kind])

    def expected(self) -> set[str]:
        """One online collector per store (every one that names no store)."""
        with self.changed:
            chosen: dict[str, str] = {}
            for who, store in sorted(self.online.items()):
                chosen.setdefault(store or f"collector:{who}", who)
            return set(chosen.values())

    def wait(self, expected: set[str], timeout: float) -> tuple[list[dict[str, Any]], list[str]]:
        """(answers, collectors that did not answer) once all of ``expected`` answered or ``timeout`` passed."""
        with self.changed:
            self.changed.wait_for(lambda: expected <= set(self.answers), timeout=timeout)
            return [self.answers[c] for c in sorted(self.answers)], sorted(expected - set(self.answers))


def ask(broker: str | BrokerAddress, body: dict[str, Any], *, reply_type: str, prefix: str = DEFAULT_PREFIX,
        timeout: float = 5.0, parts: int | None = PART_ITEMS) -> tuple[list[dict[str, Any]], list[str]]:
    """Send query ``body`` (its type and parameters) to one online collector per store; returns (answers, collectors that did not answer).

    ``parts``: ask for answers in parts of at most this many items (None: in one message each).

    Raises FleetError when the broker is unreachable or no collector is online.
    """
    from edgekit.fleet.mqtt import BrokerSession, to_address  # ssl and sockets: not for merging answers (fleet status --db)

    address = to_address(broker)
    url = address.url
    qid = uuid.uuid4().hex[:16]
    replies = _Replies(f"{prefix}/fleet/monitor/reply/{qid}", reply_type)
    session = BrokerSession(address, f"edgekit-ask-{qid[:8]}", topics=(Topics.fleet_collector("+", prefix), replies.reply),
                            on_message=replies.on_message).open()
    try:
        deadline = time.monotonic() + timeout
        if not session.wait_ready(max(0.1, deadline - time.monotonic())):
            raise FleetError(session.refusal or f"the broker at {url} did not confirm a subscription within {timeout:g} s")
        # the collectors' retained presence follows the SUBACK: all of it is in once the marker is back
        replies.marker.settle(session, min(PRESENCE_S, deadline - time.monotonic()))
        expected = replies.expected()
        if not expected:
            raise NoCollector(f"no fleet collector is online at {url}: start one with `edgekit fleet watch --broker {url} --db fleet.sqlite`, "
                             "or read a collector's database with --db")
        q = {"v": 1, **body, "id": qid, "reply": replies.reply, "to": sorted(expected), "ts": round(time.time(), 3)}
        if parts is not None:
            q["parts"] = parts
        session.publish(Topics.fleet_query(prefix), json.dumps(q).encode())
        return replies.wait(expected, max(0.0, deadline - time.monotonic()))
    finally:
        session.close()
