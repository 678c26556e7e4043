"""Collectors against a real Mosquitto: shared subscription, alerts on MQTT, drift queries, a live agent."""

import base64
import json
import time
import uuid

import numpy as np
import pytest
from click.testing import CliRunner

from device_agent.contract.protocol import Command, CommandKind, Topics, encode
from edgekit.cli.fleet_monitor import drift, watch
from edgekit.monitor.collector import Collector
from edgekit.monitor.store import DeviceQuery, SqliteStore
from tests.conftest import wait_until
from tests.monitor.conftest import STDS, reference_inputs

WINDOW = 600


class Publisher:
    def __init__(self, broker) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:6]}")
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def publish(self, messages, *, retain: bool = False) -> None:
        infos = [self.client.publish(t, p, qos=1, retain=retain) for t, p in messages]
        for i in infos:
            i.wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def publisher(mosquitto):
    p = Publisher(mosquitto)
    yield p
    p.close()


@pytest.fixture
def collectors(mosquitto, model_dir):
    made = []

    def make(store=":memory:", **kw) -> Collector:
        c = Collector(mosquitto.url, store, **kw)
        c.register(model_dir)
        c.start()
        made.append(c)
        assert c.wait_ready(10), "the collector did not subscribe"
        return c

    yield make
    for c in made:
        c.stop()


def stored(c: Collector) -> set[tuple[str, int]]:
    return {(m.device, m.seq) for m in c.store.telemetry()}


def test_two_collectors_split_the_telemetry_and_alert_on_mqtt(mosquitto, mqtt_collector, collectors, publisher, make_device, model_dir, rng):
    alerts_seen = mqtt_collector(mosquitto, [Topics.fleet_alerts()])
    a, b = collectors(collector_id="watch-a"), collectors(collector_id="watch-b")
    devices = [make_device(model_dir, device=f"cam-{i}") for i in range(3)]
    publisher.publish([d.state() for d in devices], retain=True)
    sent = []
    for _ in range(6):
        for d in devices:
            msgs = d.window(reference_inputs(WINDOW, rng))
            sent += msgs
            publisher.publish(msgs)
    x = reference_inputs(WINDOW, rng)
    x[:, [2, 5]] += STDS[[2, 5]]
    shifted = devices[1].window(x)
    publisher.publish(shifted)
    everything = {(json.loads(p)["device"], json.loads(p)["seq"]) for _, p in sent + shifted}
    wait_until(lambda: stored(a) | stored(b) == everything, 15, what="all windows stored by the two collectors")
    assert stored(a) and stored(b) and not stored(a) & stored(b)  # split, each window exactly once
    # states are not shared: both collectors know every device and its group
    assert [d.device for d in a.store.devices()] == [d.device for d in b.store.devices()] == ["cam-0", "cam-1", "cam-2"]
    alerts = alerts_seen.wait_for(lambda c: c.payloads("/fleet/alerts/device/cam-1"), 15, what="the drift alert on MQTT")
    drift_alerts = [x for x in alerts if x["kind"] == "drift"]
    assert len(drift_alerts) == 1
    alert = drift_alerts[0]
    assert {f["name"] for f in alert["features"]} == {"x[2]", "x[5]"} and alert["level"] == "alert"
    assert alert["collector"] in ("watch-a", "watch-b") and alert["group"] == "cameras" and alert["device"] == "cam-1"
    assert not [x for x in alerts_seen.payloads() if x["kind"] == "drift" and x["device"] != "cam-1"]

    # fleet drift --broker asks both collectors and adds their shares up
    r = CliRunner().invoke(drift, ["--broker", mosquitto.url, "--group", "cameras", "--window", "1h", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["collectors_missing"] == []
    group = doc["reports"][0]
    assert group["scope"] == "group" and group["name"] == "cameras" and group["samples"] == 19 * WINDOW
    assert group["devices"] == ["cam-0", "cam-1", "cam-2"] and group["windows"] == 19
    cam1 = next(x for x in doc["reports"] if x["name"] == "cam-1")
    assert cam1["samples"] == 7 * WINDOW and cam1["level"] in ("ok", "warn", "alert")
    r = CliRunner().invoke(drift, ["--broker", mosquitto.url, "--device", "cam-0"])
    assert r.exit_code == 0 and r.output.startswith("device cam-0  mlp 1.0.0  ok  (3600 samples in 6 window(s)")


def test_drift_without_a_collector_says_how_to_start_one(mosquitto):
    r = CliRunner().invoke(drift, ["--broker", mosquitto.url], catch_exceptions=True)
    assert r.exit_code != 0
    assert "no fleet collector is online" in str(r.exception) and "edgekit fleet watch --broker" in str(r.exception)


def test_deploy_commands_register_the_reference(mosquitto, collectors, publisher, model_dir_v2):
    c = collectors()
    manifest = (model_dir_v2 / "edgekit.json").read_bytes()
    cmd = Command(CommandKind.DEPLOY, "job-1", time.time(), {"schema": "edgekit.job", "manifest": base64.b64encode(manifest).decode()},
                  device="pi-99")
    publisher.publish([(Topics("pi-99").cmd, encode(cmd))])
    ref = wait_until(lambda: c.store.reference("mlp", "2.0.0"), 10, what="the reference from the deploy command")
    assert ref.source == "deploy job job-1" and len(ref.features) == 8 and ref.baseline_accuracy() == pytest.approx(0.95)


def test_a_live_agent_over_mqtt_to_an_alert(mosquitto, mqtt_collector, collectors, make_device, model_dir, rng, tmp_path):
    alerts_seen = mqtt_collector(mosquitto, [Topics.fleet_alerts()])
    c = collectors(store=tmp_path / "fleet.sqlite")
    dev = make_device(model_dir, device="pi-07", broker=mosquitto.url, interval_s=3600)
    dev.daemon.start()
    try:
        dev.predict(reference_inputs(WINDOW, rng))
        dev.daemon.publish_telemetry()
        x = reference_inputs(WINDOW, rng)
        x[:, 4] += 1.2 * STDS[4]
        dev.predict(x)
        dev.daemon.publish_telemetry()
        got = alerts_seen.wait_for(lambda m: m.payloads("/fleet/alerts/device/pi-07"), 20, what="the drift alert")
    finally:
        dev.daemon.stop()
    assert [f["name"] for f in got[0]["features"]] == ["x[4]"] and got[0]["group"] in (None, "cameras")  # None: no state seen yet
    wait_until(lambda: c.store.device("pi-07") is not None and c.store.device("pi-07").group == "cameras", 10, what="the device state")
    # the database serves fleet drift --db and the status column
    from edgekit.monitor import drift_summary

    assert drift_summary(c.store, "pi-07")["features"] == ["x[4]"]
    # ... and the broker keeps it retained for fleet status
    from edgekit.monitor.status import drift_cell, read_drift

    summaries = wait_until(lambda: (s := read_drift(mosquitto.url)).get("pi-07", {}).get("level") == "alert" and s, 10, what="the summary")
    assert drift_cell(summaries, "pi-07").startswith("alert: x[4] since ") and drift_cell(summaries, "pi-99") == "—"
    r = CliRunner().invoke(drift, ["--db", str(tmp_path / "fleet.sqlite"), "--device", "pi-07", "--window", "10m"])
    assert r.exit_code == 0, r.output
    assert "device pi-07  mlp 1.0.0" in r.output
    # fleet status shows the verdict in its drift column
    from edgekit.cli.main import cli

    r = CliRunner().invoke(cli, ["fleet", "status", "--broker", mosquitto.url, "--state-dir", str(tmp_path / "fleet"), "--wait", "1", "--json"])
    assert r.exit_code == 0, r.output
    (row,) = json.loads(r.output)
    assert row["device"] == "pi-07" and row["drift_level"] == "alert" and row["drift"].startswith("alert: x[4] since ")


def test_watch_command_runs_for_a_bounded_time(mosquitto, publisher, make_device, model_dir, rng, tmp_path):
    dev = make_device(model_dir, device="pi-09")
    x = reference_inputs(WINDOW, rng)
    x[:, 1] = np.nan
    result = {}

    def run():
        result["r"] = CliRunner().invoke(watch, ["--broker", mosquitto.url, "--db", str(tmp_path / "w.sqlite"), "--model", str(model_dir),
                                                 "--duration", "4s", "--id", "watch-cli"])

    import threading

    t = threading.Thread(target=run)
    t.start()
    wait_until(lambda: any(b"watch-cli" in p and b"online" in p for p in _retained(mosquitto)), 10, what="the collector online")
    publisher.publish(dev.window(x))
    t.join(20)
    r = result["r"]
    assert r.exit_code == 0, r.output
    assert "reference: mlp 1.0.0 (8 features)" in r.output
    assert "pi-09: input drift (alert) in x[1]" in r.output and "NaN share 100.0%" in r.output
    assert "stopped: 1 telemetry windows stored (0 repeats dropped), 1 alert(s)" in r.output
    with SqliteStore(tmp_path / "w.sqlite") as store:
        assert [a.kind for a in store.alerts()] == ["drift"]


def _retained(broker) -> list[bytes]:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    got: list[bytes] = []
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"peek-{uuid.uuid4().hex[:6]}")
    c.on_message = lambda cl, u, m: got.append(bytes(m.payload))
    c.connect(broker.host, broker.port)
    c.subscribe(Topics.fleet_collector("+"), qos=1)
    c.loop_start()
    time.sleep(0.3)
    c.loop_stop()
    c.disconnect()
    return got


def test_collectors_sharing_one_database_answer_without_double_counting(mosquitto, collectors, publisher, make_device, model_dir, rng,
                                                                        tmp_path):
    db = tmp_path / "shared.sqlite"
    a, b = collectors(store=db, collector_id="watch-1"), collectors(store=db, collector_id="watch-2")
    dev = make_device(model_dir, device="cam-9")
    msgs = [m for _ in range(6) for m in dev.window(reference_inputs(WINDOW, rng))]
    publisher.publish(msgs)
    wait_until(lambda: len(a.store.telemetry()) == 6, 15, what="six windows in the shared database")
    assert {m.device for m in b.store.telemetry()} == {"cam-9"}
    r = CliRunner().invoke(drift, ["--broker", mosquitto.url, "--device", "cam-9", "--json"])
    assert r.exit_code == 0, r.output
    (rep,) = json.loads(r.output)["reports"]
    assert rep["samples"] == 6 * WINDOW and rep["windows"] == 6 and rep["level"] == "ok"


def test_a_collector_with_a_stable_id_survives_a_broker_restart(mosquitto, collectors, make_device, model_dir, rng):
    c = collectors(collector_id="watch-stable")
    dev = make_device(model_dir, device="cam-5")
    first = dev.window(reference_inputs(100, rng))
    p = Publisher(mosquitto)
    p.publish(first)
    p.close()
    wait_until(lambda: len(c.store.telemetry()) == 1, 10, what="the first window")
    mosquitto.restart()
    wait_until(lambda: c.wait_ready(0.1), 20, what="the collector to reconnect and resubscribe")
    p = Publisher(mosquitto)
    p.publish(dev.window(reference_inputs(100, rng)))
    p.close()
    wait_until(lambda: [m.seq for m in c.store.telemetry()] == [1, 2], 10, what="the window sent after the restart")


def test_fleet_status_comes_from_the_collectors_store_complete_filtered_and_paged(mosquitto, collectors, publisher, make_device,
                                                                                    model_dir, rng, tmp_path):
    from device_agent.contract.protocol import JobState, JobUpdate
    from edgekit.cli.main import cli
    from edgekit.fleet.mqtt import rollout_topic

    db = tmp_path / "fleet.sqlite"
    c = collectors(store=db, collector_id="watch-status")
    devices = [make_device(model_dir, device=f"cam-{i}", group="cameras" if i < 3 else "doors") for i in range(5)]
    publisher.publish([d.state() for d in devices], retain=True)
    publisher.publish([(Topics("cam-1").job("job-7"), encode(JobUpdate("cam-1", 1, 1, time.time(), "job-7", JobState.FAILED,
                                                                       reason="nan_outputs")))], retain=True)
    publisher.publish([(rollout_topic("job-7"), json.dumps({"v": 1, "type": "rollout", "job": "job-7", "status": "aborted",
                                                            "aborted": "aborted after wave 1", "waves": [["cam-1"]]}).encode())], retain=True)
    x = reference_inputs(WINDOW, rng)
    x[:, 3] += 2 * STDS[3]
    publisher.publish(devices[2].window(x) + devices[0].window(reference_inputs(WINDOW, rng)))
    wait_until(lambda: c.store.device_page(DeviceQuery(drift="alert")).total == 1 and c.store.jobs(job="job-7")
               and c.store.rollouts(), 15, what="the devices page, the job and the rollout in the store")
    assert c.store.rollouts()[0]["aborted"] == "aborted after wave 1"

    def status(*args):
        r = CliRunner().invoke(cli, ["fleet", "status", *args, "--state-dir", str(tmp_path / "state"), "--json"])
        assert r.exit_code == 0, r.output
        return json.loads(r.stdout), r.stderr

    rows, _ = status("--broker", mosquitto.url)
    assert [r["device"] for r in rows] == [f"cam-{i}" for i in range(5)] and all(r["online"] for r in rows)
    assert rows[1]["job_state"] == "FAILED" and rows[1]["job_reason"] == "nan_outputs" and rows[0]["requests"] >= 1
    assert rows[2]["drift_level"] == "alert" and rows[2]["drift"].startswith("alert: x[3] since ") and rows[3]["drift"] == "—"
    rows, note = status("--broker", mosquitto.url, "--group", "cameras", "--limit", "2", "--offset", "1")
    assert [r["device"] for r in rows] == ["cam-1", "cam-2"] and "devices 2-3 of 3: --offset 3 for more" in note
    assert [r["device"] for r in status("--db", str(db), "--drift", "alert")[0]] == ["cam-2"]
    assert [r["device"] for r in status("--db", str(db), "--job-state", "FAILED")[0]] == ["cam-1"]
    text = CliRunner().invoke(cli, ["fleet", "status", "--db", str(db), "--state-dir", str(tmp_path / "state")]).output
    assert text.splitlines()[0].split()[:3] == ["device", "online", "model"] and len(text.splitlines()) == 6


def test_collectors_sharing_postgresql_store_each_window_once(postgres, mosquitto, collectors, publisher, make_device, model_dir, rng):
    a, b = collectors(store=postgres, collector_id="watch-pg-a"), collectors(store=postgres, collector_id="watch-pg-b")
    devs = [make_device(model_dir, device=f"pg-{i}") for i in range(3)]
    publisher.publish([d.state() for d in devs], retain=True)
    msgs = [m for _ in range(4) for d in devs for m in d.window(reference_inputs(WINDOW, rng))]
    publisher.publish(msgs + msgs[::2])  # every other window delivered twice: one copy may reach each collector
    wait_until(lambda: len(a.store.telemetry()) == 12, 20, what="twelve windows in the shared database")
    time.sleep(0.5)
    assert len(b.store.telemetry()) == 12
    assert a.monitor.stats["telemetry"] + b.monitor.stats["telemetry"] == 12
    assert sum(s.totals.windows for s in a.store.spans(since=0)) == 12
    r = CliRunner().invoke(drift, ["--broker", mosquitto.url, "--group", "cameras", "--json"])
    assert r.exit_code == 0, r.output
    group = json.loads(r.output)["reports"][0]
    assert group["windows"] == 12 and group["samples"] == 12 * WINDOW  # one collector answered for the shared store
