"""``fleet status`` / ``fleet drift`` at fleet scale (issue 15): what the asking side waits for, the devices page as read, imports.

The asking side waits for a marker it publishes behind its subscription instead of fixed pauses, so it has
every retained message (collector presence, drift summaries) however many there are, and no more waiting
than that; fleet sessions send each packet at once (TCP_NODELAY); the devices page is built from the values
as read (no record per device), with the same rows; ``fleet status`` loads neither the collector nor pydantic.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from device_agent.contract.protocol import DeviceStatus, StateMessage, Topics
from edgekit.fleet.mqtt import BrokerSession, Received, to_address
from edgekit.monitor.asking import Marker, ask
from edgekit.monitor.status import device_rows, read_drift, status_answer
from edgekit.monitor.store import DEVICE_FIELDS, DeviceQuery, DeviceRow, SqliteStore

ROOT = Path(__file__).resolve().parents[2]


def _retain(broker, messages: list[tuple[str, bytes]]) -> None:
    """Publish retained QoS 1 messages and wait until the broker has every one."""
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"retain-{uuid.uuid4().hex[:6]}")
    c.max_inflight_messages_set(100)
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        infos = [c.publish(t, p, qos=1, retain=True) for t, p in messages]
        for i in infos:
            i.wait_for_publish(30)
    finally:
        c.loop_stop()
        c.disconnect()


def test_read_drift_has_every_retained_summary_and_waits_no_longer(mosquitto):
    n = 3000
    _retain(mosquitto, [(Topics.fleet_drift(f"dev-{i:05d}"), json.dumps({"device": f"dev-{i:05d}", "level": "ok", "text": "ok"}).encode())
                        for i in range(n)])
    started = time.monotonic()
    got = read_drift(mosquitto.url, settle_s=60.0)
    # the marker came back behind the last summary: all of them, long before the bound (a fixed pause of 0.3 s kept a third of 10,000)
    assert len(got) == n and got["dev-02999"]["text"] == "ok"
    assert time.monotonic() - started < 30.0


def test_read_drift_on_a_broker_without_summaries_returns_at_once(mosquitto):
    started = time.monotonic()
    assert read_drift(mosquitto.url, settle_s=60.0) == {}
    assert time.monotonic() - started < 30.0  # the marker ends the wait, not the bound


def test_ask_sends_the_query_to_every_collector_whose_presence_is_retained(mosquitto):
    names = [f"watch-{i:02d}" for i in range(40)]
    _retain(mosquitto, [(Topics.fleet_collector(c), json.dumps({"v": 1, "type": "collector", "collector": c, "status": "online",
                                                                 "store": f"store-{c}"}).encode()) for c in names])
    _retain(mosquitto, [(Topics.fleet_collector("watch-gone"), json.dumps({"status": "offline", "store": "store-gone"}).encode())])
    seen: list[dict] = []
    listener = BrokerSession(to_address(mosquitto.url), "listener", topics=(Topics.fleet_query(),),
                             on_message=lambda m: seen.append(json.loads(m.payload))).open()
    try:
        assert listener.wait_ready(10)
        answers, missing = ask(mosquitto.url, {"type": "status_query", "filter": {}}, reply_type="status_reply", timeout=1.0)
        assert answers == [] and missing == names  # nobody answers here: every collector asked is named
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen[0]["to"] == names and seen[0]["type"] == "status_query"
    finally:
        listener.close()


class _Echo:
    """A session stand-in: what is published comes back (or, ``drop``, never does)."""

    def __init__(self, marker: Marker, *, drop: bool) -> None:
        self.marker, self.drop, self.published = marker, drop, []

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.published.append((topic, payload))
        if not self.drop:
            threading.Timer(0.01, lambda: self.marker.seen(Received(topic, payload, 1, 1))).start()


def test_a_marker_is_seen_once_back_and_a_dropped_one_ends_the_wait_at_its_bound():
    m = Marker("edgekit/v1/fleet/monitor/reply/abc")
    assert not m.seen(Received(m.topic, b'{"type": "status_reply"}', 1, 1))  # an answer on the same topic is not the marker
    assert not m.seen(Received("edgekit/v1/fleet/drift/pi-07", m.token, 1, 1))
    assert m.settle(_Echo(m, drop=False), 10.0)  # type: ignore[arg-type]
    dropped = Marker(m.topic)
    started = time.monotonic()
    assert not dropped.settle(_Echo(dropped, drop=True), 0.2)  # type: ignore[arg-type]  # e.g. a broker's ACL refuses the publish
    assert time.monotonic() - started >= 0.2


def test_fleet_sessions_send_without_nagle(mosquitto):
    s = BrokerSession(to_address(mosquitto.url), f"nodelay-{uuid.uuid4().hex[:6]}").open()
    try:
        assert s.wait_ready(10)
        sock = s.client.socket()
        assert sock is not None and sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        s.close()


def _store_with_devices(path: Path) -> SqliteStore:
    store = SqliteStore(path)
    store.record_states([StateMessage(f"cam-{i}", DeviceStatus.ONLINE, 1000.0 + i, 1, "1.2.3", "cameras" if i % 2 else "doors",
                                      {"name": "mlp", "version": "1.0.0", "artifact": "model.onnx"}) for i in range(6)])
    store.set_device_drifts([("cam-1", {"level": "alert", "text": "alert: x[3] since 08:31Z", "features": ["x[3]"]}),
                             ("cam-2", {"level": "ok", "text": "ok", "since": None})])
    with store._write() as db:  # json.dumps writes NaN, which orjson does not read: a summary stored so still reads
        db.run("UPDATE devices SET drift = ? WHERE device = 'cam-3'", (json.dumps({"level": "ok", "text": "ok", "psi": float("nan")}),))
    return store


def test_the_devices_page_as_read_gives_the_records_and_the_answer_rows(tmp_path):
    store = _store_with_devices(tmp_path / "fleet.sqlite")
    try:
        q = DeviceQuery(group="cameras", limit=2, offset=1)
        table, page = store.device_table(q), store.device_page(q)
        assert (table.total, page.total, table.offset) == (3, 3, 1) and [v[0] for v in table.values] == ["cam-3", "cam-5"]
        assert all(isinstance(r, DeviceRow) for r in page.rows) and [vars(r) for r in page.rows] == table.records()
        assert list(vars(page.rows[0])) == list(DEVICE_FIELDS)
        every = store.device_page(DeviceQuery())
        assert every.rows[1].drift == {"level": "alert", "text": "alert: x[3] since 08:31Z", "features": ["x[3]"]}
        assert str(every.rows[3].drift["psi"]) == "nan"  # read by json where orjson refuses
        # a row built from its values is the dataclass's own: equal, hashable only as before, still frozen
        row = every.rows[0]
        assert row == DeviceRow(**vars(row)) and DeviceRow.of(vars(row).values()) == row
        with pytest.raises(AttributeError):
            row.device = "other"  # type: ignore[misc]
        answer = status_answer(store, {"id": "q1", "filter": {"group": "cameras"}}, collector="watch-1")
        assert answer["total"] == 3 and answer["rows"] == [vars(r) for r in store.device_page(DeviceQuery(group="cameras")).rows]
        assert device_rows(answer["rows"], now=2000.0) == device_rows(store.device_page(DeviceQuery(group="cameras")).rows, now=2000.0)
        assert device_rows(answer["rows"], now=2000.0)[0]["drift"] == "alert: x[3] since 08:31Z"
    finally:
        store.close()


def test_fleet_status_loads_neither_the_collector_nor_pydantic(tmp_path):
    store = _store_with_devices(tmp_path / "fleet.sqlite")
    store.close()
    code = ("import sys, json\n"
            "from click.testing import CliRunner\n"
            "from edgekit.cli.main import cli\n"
            f"r = CliRunner().invoke(cli, ['fleet', 'status', '--db', {str(tmp_path / 'fleet.sqlite')!r}, '--json'])\n"
            "assert r.exit_code == 0, r.output\n"
            "heavy = ('pydantic', 'edgekit.monitor.collector', 'edgekit.monitor.drift', 'edgekit.monitor.query', 'paho', 'ssl')\n"
            "print(json.dumps({'rows': len(json.loads(r.stdout)), 'loaded': [m for m in heavy if m in sys.modules]}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"rows": 6, "loaded": []}


def _answer(n: int) -> dict:
    return {"v": 1, "type": "status_reply", "id": "q1", "collector": "watch-1", "store": "s1", "total": n, "offset": 0,
            "rows": [{"device": f"dev-{i:05d}"} for i in range(n)]}


def test_an_answer_in_parts_is_read_once_every_part_is_in_whatever_their_order():
    from edgekit.monitor.asking import _Replies, parts_of

    doc = _answer(1234)
    parts = parts_of(doc, 500)
    assert [(p["part"], p["parts"], len(p["rows"])) for p in parts] == [(0, 3, 500), (1, 3, 500), (2, 3, 234)]
    assert all(p["id"] == "q1" and p["collector"] == "watch-1" and p["total"] == 1234 for p in parts)
    replies = _Replies("edgekit/v1/fleet/monitor/reply/q1", "status_reply")

    def arrive(p: dict) -> None:
        replies.on_message(Received(replies.reply, json.dumps(p).encode(), 1, 1))

    arrive(parts[2])
    arrive(parts[0])
    arrive({**parts[1], "part": 7})  # not a part of this answer: ignored
    assert replies.wait({"watch-1"}, 0.05) == ([], ["watch-1"])  # two of three parts: no answer yet
    arrive(parts[1])
    answers, missing = replies.wait({"watch-1"}, 1.0)
    assert missing == [] and answers[0]["rows"] == doc["rows"] and "part" not in answers[0] and answers[0]["total"] == 1234
    assert parts_of(_answer(0), 500)[0]["parts"] == 1  # an empty page is one part


def test_an_answer_in_one_message_from_an_earlier_collector_is_read_as_before():
    from edgekit.monitor.asking import _Replies

    replies = _Replies("edgekit/v1/fleet/monitor/reply/q1", "status_reply")
    replies.on_message(Received(replies.reply, json.dumps(_answer(3)).encode(), 1, 1))
    answers, missing = replies.wait({"watch-1"}, 1.0)
    assert missing == [] and len(answers[0]["rows"]) == 3


def test_a_collector_answers_in_the_parts_asked_for(mosquitto, tmp_path):
    from edgekit.monitor.collector import Collector
    from edgekit.monitor.status import status_query

    _store_with_devices(tmp_path / "fleet.sqlite").close()
    c = Collector(mosquitto.url, tmp_path / "fleet.sqlite", collector_id="watch-parts")
    c.start()
    try:
        assert c.wait_ready(10)
        seen: list[dict] = []
        got = {}
        for parts in (2, None):
            reply = BrokerSession(to_address(mosquitto.url), f"peek-{parts}", topics=("edgekit/v1/fleet/monitor/reply/+",),
                                  on_message=lambda m: seen.append(json.loads(m.payload)) if m.payload.startswith(b"{") else None).open()
            assert reply.wait_ready(10)
            before = len(seen)
            answers, missing = ask(mosquitto.url, status_query(DeviceQuery()), reply_type="status_reply", parts=parts)
            deadline = time.monotonic() + 5  # the peek is another connection: its copies may still be on their way
            while len(seen) - before < (3 if parts else 1) and time.monotonic() < deadline:
                time.sleep(0.01)
            reply.close()
            assert missing == [] and answers[0]["total"] == 6
            got[parts] = answers[0]["rows"]
        assert got[2] == got[None] and [r["device"] for r in got[2]] == [f"cam-{i}" for i in range(6)]
        assert sorted((m.get("part", -1), m.get("parts", 1)) for m in seen) == [(-1, 1), (0, 3), (1, 3), (2, 3)]  # -1: one message
    finally:
        c.stop()
