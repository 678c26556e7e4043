"""Drift over MQTT: ``fleet drift --broker`` asks every running collector, merges their answers.

Several collectors may split the telemetry through one shared subscription, each with its own
store: every one holds a share of every device's windows. Counts are additive, so a collector
answers a query with the *merged counts* of the windows it ingested itself (never the raw
windows), and the asking side sums the answers and judges them against the references the
collectors send along. Collectors that share one database answer for their own rows only, so
nothing is counted twice.

Query (``<prefix>/fleet/monitor/query``, QoS 1)::

    {"v": 1, "type": "drift_query", "id": "…", "reply": "<prefix>/fleet/monitor/reply/<id>",
     "device": "pi-07" | null, "group": "cameras" | null, "window_s": 3600}

Answer (on ``reply``)::

    {"v": 1, "type": "drift_reply", "id": "…", "collector": "watch-1a2b",
     "sets": [{"scope", "name", "set": WindowSet}], "references": [{"model", "version", "features", "accuracy"}],
     "accuracy": [{"device", "model", "version", "labelled", "correct"}]}
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

from device_agent.contract.manifest import FeatureProfile
from device_agent.contract.protocol import DEFAULT_PREFIX, Topics
from edgekit.errors import FleetError
from edgekit.fleet.mqtt import BrokerAddress, BrokerSession, Received, to_address
from edgekit.monitor.drift import DriftReport, DriftThresholds
from edgekit.monitor.reports import judge_set
from edgekit.monitor.store import FleetHistory, Reference
from edgekit.monitor.windows import WindowSet, group_windows

__all__ = ["answer", "ask_collectors", "merge_answers", "query"]


def query(query_id: str, reply: str, *, device: str | None = None, group: str | None = None, window_s: float = 3600.0) -> dict[str, Any]:
    """The drift query message (see the module docs)."""
    return {"v": 1, "type": "drift_query", "id": query_id, "reply": reply, "device": device, "group": group, "window_s": window_s,
            "ts": round(time.time(), 3)}


def answer(store: FleetHistory, q: dict[str, Any], *, collector: str, now: float | None = None) -> dict[str, Any]:
    """A collector's share of the answer to query ``q``: merged counts of the windows it ingested."""
    since = (time.time() if now is None else now) - float(q.get("window_s") or 3600.0)
    device, group = q.get("device"), q.get("group")
    msgs = store.telemetry(device=device, group=group, since=since, collector=collector)
    sets: list[dict[str, Any]] = []
    if group:
        sets += [{"scope": "group", "name": k[0], "set": ws.to_dict()} for k, ws in group_windows(msgs, lambda m: group).items()]
    sets += [{"scope": "device", "name": k[0], "set": ws.to_dict()} for k, ws in group_windows(msgs, lambda m: m.device).items()]
    refs = []
    for model, version in sorted({(s["set"]["model"], s["set"]["version"]) for s in sets}):
        ref = store.reference(model, version)
        if ref is not None:
            refs.append({"model": model, "version": version, "features": [f.to_dict() for f in ref.features], "accuracy": ref.accuracy})
    acc: dict[tuple[str, str, str], list[int]] = {}
    for m in msgs:
        if m.feedback:
            for version, c in m.feedback.accuracy.items():
                a = acc.setdefault((m.device, (m.model or {}).get("name") or "?", version), [0, 0])
                a[0] += int(c.get("labelled", 0))
                a[1] += int(c.get("correct", 0))
    return {"v": 1, "type": "drift_reply", "id": q.get("id"), "collector": collector, "sets": sets, "references": refs,
            "accuracy": [{"device": d, "model": mo, "version": v, "labelled": a[0], "correct": a[1]} for (d, mo, v), a in sorted(acc.items())]}


def merge_answers(answers: list[dict[str, Any]], *, thresholds: DriftThresholds | None = None) -> tuple[list[DriftReport], list[dict[str, Any]]]:
    """Sum the collectors' answers; judge each (scope, name, model, version). Returns (drift reports, accuracy rows)."""
    sets: dict[tuple[str, str, str, str], WindowSet] = {}
    refs: dict[tuple[str, str], Reference] = {}
    acc: dict[tuple[str, str, str], list[int]] = {}
    for a in answers:
        for s in a.get("sets", []):
            ws = WindowSet.from_dict(s["set"])
            key = (s["scope"], s["name"], ws.model, ws.version)
            if key in sets:
                sets[key].merge(ws)
            else:
                sets[key] = ws
        for r in a.get("references", []):
            refs[(r["model"], r["version"])] = Reference(r["model"], r["version"],
                                                         tuple(FeatureProfile.from_dict(f, "reference") for f in r["features"]),
                                                         {k: float(v) for k, v in (r.get("accuracy") or {}).items()})
        for row in a.get("accuracy", []):
            x = acc.setdefault((row["device"], row["model"], row["version"]), [0, 0])
            x[0] += int(row["labelled"])
            x[1] += int(row["correct"])
    reports = [judge_set(ws, refs.get((model, version)), scope=scope, name=name, thresholds=thresholds)
               for (scope, name, model, version), ws in sorted(sets.items(), key=lambda kv: (kv[0][0] != "group", kv[0][1:]))]
    rows = []
    for (device, model, version), (n, k) in sorted(acc.items()):
        ref = refs.get((model, version))
        rows.append({"device": device, "model": model, "version": version, "labelled": n, "correct": k, "accuracy": k / n if n else None,
                     "baseline": ref.baseline_accuracy() if ref else None})
    return reports, rows


class _Replies:
    """Collector presence and drift replies as they arrive (paho's thread), awaited by the asking thread."""

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.online: dict[str, bool] = {}
        self.answers: dict[str, dict[str, Any]] = {}
        self.changed = threading.Condition()

    def on_message(self, msg: Received) -> None:
        try:
            d = json.loads(msg.payload) if msg.payload else {}
        except ValueError:
            return
        with self.changed:
            if msg.topic == self.reply and d.get("type") == "drift_reply":
                self.answers[str(d.get("collector"))] = d
            elif msg.topic != self.reply and isinstance(d, dict):
                self.online[msg.topic.rsplit("/", 1)[-1]] = d.get("status") == "online"
            self.changed.notify_all()

    def expected(self) -> set[str]:
        with self.changed:
            return {c for c, up in self.online.items() if up}

    def wait(self, expected: set[str], timeout: float) -> tuple[list[dict[str, Any]], list[str]]:
        """(answers, collectors that did not answer) once all of ``expected`` answered or ``timeout`` passed."""
        with self.changed:
            self.changed.wait_for(lambda: expected <= set(self.answers), timeout=timeout)
            return list(self.answers.values()), sorted(expected - set(self.answers))


def ask_collectors(broker: str | BrokerAddress, *, device: str | None = None, group: str | None = None, window_s: float = 3600.0,
                   prefix: str = DEFAULT_PREFIX, timeout: float = 5.0) -> tuple[list[dict[str, Any]], list[str]]:
    """Send a drift query to every online collector; returns (answers, collectors that did not answer in time).

    Args:
        broker: ``mqtt://`` URL or an address with credentials (:func:`edgekit.fleet.mqtt.parse_broker_url`).

    Raises FleetError when the broker is unreachable or no collector is online.
    """
    address = to_address(broker)
    url = address.url
    qid = uuid.uuid4().hex[:16]
    replies = _Replies(f"{prefix}/fleet/monitor/reply/{qid}")
    session = BrokerSession(address, f"edgekit-drift-{qid[:8]}", topics=(Topics.fleet_collector("+", prefix), replies.reply),
                            on_message=replies.on_message).open()
    try:
        deadline = time.monotonic() + timeout
        if not session.wait_ready(max(0.1, deadline - time.monotonic())):
            raise FleetError(session.refusal or f"the broker at {url} did not confirm a subscription within {timeout:g} s")
        time.sleep(min(0.3, max(0.0, deadline - time.monotonic())))  # retained presence arrives right after the SUBACK
        expected = replies.expected()
        if not expected:
            raise FleetError(f"no fleet collector is online at {url}: start one with `edgekit fleet watch --broker {url} --db fleet.sqlite`, "
                             "or read a collector's database with --db")
        q = query(qid, replies.reply, device=device, group=group, window_s=window_s)
        session.publish(Topics.fleet_query(prefix), json.dumps(q).encode())
        return replies.wait(expected, max(0.0, deadline - time.monotonic()))
    finally:
        session.close()
