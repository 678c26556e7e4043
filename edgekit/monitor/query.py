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

import time
import uuid
from typing import Any

from device_agent.contract.manifest import FeatureProfile
from device_agent.contract.protocol import DEFAULT_PREFIX, QOS, Topics
from edgekit.errors import OtaError
from edgekit.monitor.drift import DriftReport, DriftThresholds, Level, WindowSet, evaluate
from edgekit.monitor.monitor import group_windows
from edgekit.monitor.store import FleetStore, Reference

__all__ = ["answer", "ask_collectors", "merge_answers", "query"]


def query(query_id: str, reply: str, *, device: str | None = None, group: str | None = None, window_s: float = 3600.0) -> dict[str, Any]:
    return {"v": 1, "type": "drift_query", "id": query_id, "reply": reply, "device": device, "group": group, "window_s": window_s,
            "ts": round(time.time(), 3)}


def answer(store: FleetStore, q: dict[str, Any], *, collector: str, now: float | None = None) -> dict[str, Any]:
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
    reports = []
    for (scope, name, model, version), ws in sorted(sets.items(), key=lambda kv: (kv[0][0] != "group", kv[0][1:])):
        ref = refs.get((model, version))
        if ref is None:
            reports.append(DriftReport(scope, name, model, version, Level.NOT_ENOUGH_DATA, (), ws.samples, ws.windows,
                                       tuple(sorted(ws.devices)), ws.start, ws.end, untracked=tuple(sorted(ws.features))))
        else:
            reports.append(evaluate(ws, ref.features, scope=scope, name=name, thresholds=thresholds))
    rows = []
    for (device, model, version), (n, k) in sorted(acc.items()):
        ref = refs.get((model, version))
        rows.append({"device": device, "model": model, "version": version, "labelled": n, "correct": k, "accuracy": k / n if n else None,
                     "baseline": ref.baseline_accuracy() if ref else None})
    return reports, rows


def ask_collectors(broker: str, *, device: str | None = None, group: str | None = None, window_s: float = 3600.0,
                   prefix: str = DEFAULT_PREFIX, timeout: float = 5.0, username: str | None = None, password: str | None = None,
                   ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """Send a drift query to every online collector; returns (answers, collectors that did not answer in time).

    Raises OtaError when the broker is unreachable or no collector is online.
    """
    import json
    import threading

    from edgekit.monitor.collector import connect_client, parse_broker_url

    address = parse_broker_url(broker, username=username, password=password, ca_file=ca_file, cert_file=cert_file, key_file=key_file)
    qid = uuid.uuid4().hex[:16]
    reply = f"{prefix}/fleet/monitor/reply/{qid}"
    online: dict[str, bool] = {}
    answers: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()
    subscribed = threading.Event()
    changed = threading.Condition(lock)

    def on_connect(client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        client.subscribe([(Topics.fleet_collector("+", prefix), QOS), (reply, QOS)])

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        try:
            d = json.loads(msg.payload) if msg.payload else {}
        except ValueError:
            return
        with changed:
            if msg.topic == reply and d.get("type") == "drift_reply":
                answers[str(d.get("collector"))] = d
            elif msg.topic != reply and isinstance(d, dict):
                online[msg.topic.rsplit("/", 1)[-1]] = d.get("status") == "online"
            changed.notify_all()

    client = connect_client(address, f"edgekit-drift-{qid[:8]}")
    client.on_connect = on_connect
    client.on_message = on_message
    client.on_subscribe = lambda *a: subscribed.set()
    try:
        client.connect(address.host, address.port, keepalive=30)
    except OSError as e:
        raise OtaError(f"cannot reach the broker at {address.host}:{address.port}: {e}; is it running? (--broker)") from None
    client.loop_start()
    try:
        deadline = time.monotonic() + timeout
        if not subscribed.wait(max(0.1, deadline - time.monotonic())):
            raise OtaError(f"the broker at {broker} did not confirm a subscription within {timeout:g} s")
        time.sleep(min(0.3, max(0.0, deadline - time.monotonic())))  # retained presence arrives right after the SUBACK
        with lock:
            expected = {c for c, up in online.items() if up}
        if not expected:
            raise OtaError(f"no fleet collector is online at {broker}: start one with `edgekit fleet watch --broker {broker} --db fleet.sqlite`, "
                           "or read a collector's database with --db")
        client.publish(Topics.fleet_query(prefix), json.dumps(query(qid, reply, device=device, group=group, window_s=window_s)).encode(), qos=QOS)
        with changed:
            changed.wait_for(lambda: expected <= set(answers), timeout=max(0.0, deadline - time.monotonic()))
            got = list(answers.values())
            missing = sorted(expected - set(answers))
    finally:
        client.loop_stop()
        client.disconnect()
    return got, missing
