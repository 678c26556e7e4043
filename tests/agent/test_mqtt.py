"""The agent against a real Mosquitto: birth/LWT, telemetry content, outages, restarts, TLS, commands."""

import shutil
import subprocess
import threading
import time

import numpy as np
import pytest

from device_agent.config import parse_config
from device_agent.contract.errors import InvalidInput
from device_agent.contract.manifest import load_manifest
from device_agent.contract.protocol import Command, CommandKind, JobState, Topics, encode
from device_agent.daemon import Daemon
from tests.agent.agent_helpers import wait_until

pytestmark = pytest.mark.slow


def make_config(tmp_path, broker, model_dir, *, device="pi-07", telemetry=None, outbox=None, broker_extra=None, api=False):
    doc = {
        "state_dir": str(tmp_path / "state"),
        "device": {"id": device, "group": "lab"},
        "broker": {"url": broker.url, "reconnect_min_s": 0.05, "reconnect_max_s": 0.3, "keepalive_s": 5, **(broker_extra or {})},
        "model": {"path": str(model_dir)},
        "api": {"enabled": api, "port": 0},
        "telemetry": {"interval_s": 3600.0, **(telemetry or {})},
        "outbox": outbox or {},
    }
    return parse_config(doc, base_dir=tmp_path)


def started(cfg):
    daemon = Daemon.from_config(cfg)
    daemon.start()
    return daemon


def seqs(collector, device="pi-07"):
    return [m["seq"] for m in collector.payloads(f"{device}/telemetry")]


def test_birth_is_retained_and_clean_stop_publishes_offline(tmp_path, mosquitto, mqtt_collector, digits_dir):
    daemon = started(make_config(tmp_path, mosquitto, digits_dir))
    try:
        wait_until(lambda: daemon.link.connected, 10, what="the agent to connect")
    finally:
        daemon.stop()
    # a collector that subscribes afterwards still gets the retained state: the clean shutdown's "offline"
    late = mqtt_collector(mosquitto, ["edgekit/v1/+/state"])
    late.wait_for(lambda c: c.payloads("pi-07/state"), 5, "the retained state")
    state = late.payloads("pi-07/state")[-1]
    assert state["status"] == "offline" and state["reason"] == "shutdown"
    # and a new start publishes a retained "online" birth with the model and the hardware
    daemon = started(make_config(tmp_path, mosquitto, digits_dir))
    try:
        late.wait_for(lambda c: any(s["status"] == "online" for s in c.payloads("pi-07/state")), 10, "the birth message")
        birth = [s for s in late.payloads("pi-07/state") if s["status"] == "online"][-1]
        m = load_manifest(digits_dir)
        assert birth["model"]["name"] == m.name and birth["model"]["version"] == m.version and birth["model"]["ready"] is True
        assert birth["hardware"]["cpus"] >= 1 and birth["runtime"]["onnxruntime"]
        assert birth["boot"] == 2 and birth["group"] == "lab"  # the boot counter persists in the state dir
    finally:
        daemon.stop()


def test_telemetry_counts_and_histograms_for_known_inputs(tmp_path, mosquitto, mqtt_collector, digits_dir, digits):
    c = mqtt_collector(mosquitto, ["edgekit/v1/+/telemetry"])
    daemon = started(make_config(tmp_path, mosquitto, digits_dir))
    try:
        x = np.load(digits["eval"])["x"][:20]
        for i in range(0, 20, 4):
            daemon.agent.predict({"x": x[i:i + 4]})
        bad = x[:1].copy()
        bad[0, 0, 0, :3] = np.nan
        for feeds in ({"x": bad}, {"x": x[0]}):
            with pytest.raises(InvalidInput):
                daemon.agent.predict(feeds)
        seq = daemon.publish_telemetry()
        c.wait_for(lambda c: c.payloads("pi-07/telemetry"), 10, "a telemetry message")
        t = c.payloads("pi-07/telemetry")[0]
    finally:
        daemon.stop()
    assert t["seq"] == seq == 1 and t["device"] == "pi-07" and t["v"] == 1
    assert t["requests"] == 7 and t["errors"] == {"nonfinite": 1, "shape": 1}
    assert t["latency_ms"]["count"] == 5 and 0 < t["latency_ms"]["p50"] <= t["latency_ms"]["p99"] <= t["latency_ms"]["max"]
    assert t["window"]["start"] < t["window"]["end"] and t["model"]["version"] == load_manifest(digits_dir).version
    (f,) = t["features"]
    # what the device saw: the 20 valid samples plus the NaN sample (summarised, then refused)
    seen = np.concatenate([x, bad])[:, 0].reshape(-1).astype(np.float64)
    finite = seen[np.isfinite(seen)]
    edges = np.array(load_manifest(digits_dir).features[0].edges)
    counts, _ = np.histogram(finite[(finite >= edges[0]) & (finite <= edges[-1])], bins=edges)
    assert f["name"] == "x[0]" and f["n"] == seen.size and f["nan"] == 3
    assert f["counts"] == counts.tolist()
    assert f["under"] == int((finite < edges[0]).sum()) and f["over"] == int((finite > edges[-1]).sum())
    assert f["mean"] == pytest.approx(finite.mean(), rel=1e-4) and f["max"] == pytest.approx(finite.max())
    assert t["samples"] == 21


def test_broker_outage_under_load_loses_nothing_and_keeps_order(tmp_path, mosquitto, mqtt_collector, digits_dir, digits):
    c = mqtt_collector(mosquitto, ["edgekit/v1/+/telemetry"])
    daemon = started(make_config(tmp_path, mosquitto, digits_dir, telemetry={"interval_s": 0.05}))
    x = np.load(digits["eval"])["x"][:8]
    stop = threading.Event()

    def load():
        while not stop.is_set():
            daemon.agent.predict({"x": x})

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    try:
        c.wait_for(lambda c: len(seqs(c)) >= 3, 10, "telemetry before the outage")
        mosquitto.stop()
        wait_until(lambda: not daemon.link.connected, 10, what="the agent to notice the outage")
        wait_until(lambda: daemon.outbox.depth >= 10, 10, what="messages queued during the outage")
        mosquitto.start()
        wait_until(lambda: daemon.link.connected, 15, what="the agent to reconnect")
        time.sleep(0.3)
    finally:
        stop.set()
        worker.join(5)
    last = daemon.outbox.last_seq
    c.wait_for(lambda c: last in seqs(c), 15, f"seq {last} after the broker came back")
    daemon.stop()
    got = seqs(c)
    unique = list(dict.fromkeys(got))  # duplicates (QoS 1 redelivery) are dropped by seq
    assert unique == sorted(unique), "telemetry arrived out of order"
    assert unique == list(range(1, unique[-1] + 1)), f"gaps in the sequence: {sorted(set(range(1, unique[-1] + 1)) - set(unique))[:10]}"
    payloads = c.payloads("pi-07/telemetry")
    assert sum(p["requests"] for p in {p["seq"]: p for p in payloads}.values()) == daemon.agent.metrics.snapshot()["predictions"]
    assert all(p["dropped"] == 0 for p in payloads)


def test_agent_restart_with_a_non_empty_outbox_delivers_after_restart(tmp_path, mosquitto, mqtt_collector, digits_dir):
    c = mqtt_collector(mosquitto, ["edgekit/v1/+/telemetry"])
    mosquitto.stop()
    cfg = make_config(tmp_path, mosquitto, digits_dir)
    daemon = started(cfg)
    for _ in range(3):
        daemon.publish_telemetry()
    daemon.stop()  # the stop queues the partial window as well: 4 messages wait on disk
    mosquitto.start()
    daemon = started(cfg)
    try:
        daemon.publish_telemetry()
        c.wait_for(lambda c: 5 in seqs(c), 15, "the queued messages after the restart")
    finally:
        daemon.stop()
    assert list(dict.fromkeys(seqs(c)))[:5] == [1, 2, 3, 4, 5]
    assert {p["boot"] for p in c.payloads("pi-07/telemetry") if p["seq"] <= 4} == {1}


def test_bounded_outbox_drops_oldest_and_reports_the_count(tmp_path, mosquitto, mqtt_collector, digits_dir):
    c = mqtt_collector(mosquitto, ["edgekit/v1/+/telemetry"])
    mosquitto.stop()
    daemon = started(make_config(tmp_path, mosquitto, digits_dir, outbox={"max_messages": 3}))
    try:
        for _ in range(6):
            daemon.publish_telemetry()
        assert daemon.outbox.depth == 3 and daemon.outbox.dropped_total == 3
        mosquitto.start()
        c.wait_for(lambda c: 6 in seqs(c), 15, "the surviving messages")
        daemon.publish_telemetry()
        c.wait_for(lambda c: 7 in seqs(c), 10, "the next message")
    finally:
        daemon.stop()
    got = {p["seq"]: p for p in c.payloads("pi-07/telemetry")}
    assert sorted(got)[:4] == [4, 5, 6, 7]
    assert sum(got[s]["dropped"] for s in (4, 5, 6, 7)) == 3  # every drop is reported once, in a later message


def test_mutual_tls_with_password(tmp_path, mosquitto_factory, tls_files, digits_dir):
    if not shutil.which("mosquitto_passwd"):
        pytest.skip("mosquitto_passwd is not installed")
    tls = tls_files
    pw = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(pw), "pi-07", "s3cret"], check=True, capture_output=True, timeout=30)
    subprocess.run(["mosquitto_passwd", "-b", str(pw), "collector", "c0ll"], check=True, capture_output=True, timeout=30)
    broker = mosquitto_factory(tls={**tls, "require_certificate": True}, password_file=pw)
    (tmp_path / "pw.txt").write_text("s3cret\n")
    creds = {"ca_file": str(tls["ca"]), "cert_file": str(tls["client_cert"]), "key_file": str(tls["client_key"]), "username": "pi-07"}
    daemon = started(make_config(tmp_path, broker, digits_dir, broker_extra={**creds, "password_file": str(tmp_path / "pw.txt")}))
    try:
        wait_until(lambda: daemon.link.connected, 15, what="a TLS connection")
        assert daemon.link.last_error is None
    finally:
        daemon.stop()
    (tmp_path / "bad.txt").write_text("wrong\n")
    daemon = started(make_config(tmp_path / "b", broker, digits_dir, device="pi-08", broker_extra={**creds, "password_file": str(tmp_path / "bad.txt")}))
    try:
        wait_until(lambda: daemon.link.last_error and "refused" in daemon.link.last_error, 15, what="the refusal")
        assert not daemon.link.connected
        assert daemon.agent.predict({"x": np.zeros((1, 1, 8, 8), np.float32)}).outputs  # serving does not depend on the broker
    finally:
        daemon.stop()


def test_commands_without_a_handler_are_rejected_and_handlers_are_called(tmp_path, mosquitto, mqtt_collector, digits_dir):
    import dataclasses

    import paho.mqtt.publish as publish

    from device_agent.config import OtaConfig

    c = mqtt_collector(mosquitto, ["edgekit/v1/+/jobs/+"])
    # OTA off: this test is about commands no handler takes (with OTA on, the updater takes deploy/rollback/cancel)
    daemon = started(dataclasses.replace(make_config(tmp_path, mosquitto, digits_dir), ota=OtaConfig(enabled=False)))
    seen = []
    daemon.register_command(CommandKind.CANCEL, seen.append)
    try:
        wait_until(lambda: daemon.link.connected, 10, what="the agent to connect")
        time.sleep(0.2)  # the subscription is sent right after CONNACK
        t = Topics("pi-07", "lab")
        publish.single(t.cmd, encode(Command(CommandKind.DEPLOY, "job-1", time.time(), {"url": "https://example/model.tar"})), qos=1,
                       hostname=mosquitto.host, port=mosquitto.port)
        publish.single(t.group_cmd, encode(Command(CommandKind.CANCEL, "job-2", time.time())), qos=1, hostname=mosquitto.host,
                       port=mosquitto.port)
        c.wait_for(lambda c: c.payloads("jobs/job-1"), 10, "the job rejection")
        wait_until(lambda: seen, 10, what="the cancel handler")
    finally:
        daemon.stop()
    job = c.payloads("jobs/job-1")[0]
    assert job["state"] == str(JobState.REJECTED) and "does not handle deploy commands; it handles: cancel" in job["detail"]
    assert seen[0].job == "job-2"
    with pytest.raises(ValueError, match="already registered"):
        daemon.register_command(CommandKind.CANCEL, seen.append)
