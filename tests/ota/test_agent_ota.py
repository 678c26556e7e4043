"""The real agent (from agent.toml) updated by the fleet through a real Mosquitto."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from device_agent.config import parse_config
from device_agent.daemon import Daemon
from edgekit.fleet.client import FleetClient
from edgekit.fleet.jobs import Release
from edgekit.fleet.rollout import RolloutPolicy, deploy
from edgekit.fleet.status import status_rows
from tests.ota.harness import wait_until

pytestmark = pytest.mark.slow


def config(tmp_path, broker, model_dir, key_pub, **ota):
    return parse_config({
        "state_dir": str(tmp_path / "state"),
        "device": {"id": "pi-07", "group": "lab"},
        "broker": {"url": broker.url, "reconnect_min_s": 0.05, "reconnect_max_s": 0.3},
        "model": {"path": str(model_dir), "threads": 1},
        "api": {"enabled": False},
        "telemetry": {"interval_s": 3600.0},
        "security": {"trusted_keys": [str(key_pub)]},
        "ota": {"probation_requests": 30, "probation_seconds": 30, "probation_min_requests": 10, "latency_floor_ms": 5.0, **ota},
    }, base_dir=tmp_path)


class Load:
    """Predictions from a client thread; counts failures."""

    def __init__(self, agent):
        self.agent, self.failed, self.done, self.versions = agent, 0, 0, set()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        x = {"x": np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)}
        while not self._stop.is_set():
            try:
                p = self.agent.predict(x)
                self.versions.add(p.model["version"])
                self.done += 1
            except Exception:
                self.failed += 1
            time.sleep(0.002)

    def stop(self):
        self._stop.set()
        self._t.join(5)


def test_agent_is_updated_rolled_back_and_restarts_on_the_committed_version(tmp_path, mosquitto, releases, keys, signer, mqtt_collector):
    telemetry = mqtt_collector(mosquitto, ["edgekit/v1/+/telemetry"])
    cfg = config(tmp_path, mosquitto, releases["v1"], keys["good"].public)
    daemon = Daemon.from_config(cfg)
    daemon.start()
    load = Load(daemon.agent)
    try:
        wait_until(lambda: daemon.link.connected, 10)
        with FleetClient(mosquitto.url) as fc:
            r = deploy(fc, Release.open(releases["v2"]), key=signer, devices=["pi-07"], policy=RolloutPolicy(device_timeout_s=30, chunk_size=2048))
            assert r.outcomes["pi-07"]["state"] == "SUCCEEDED", r.outcomes
            assert daemon.agent.model.version == "1.1.0"
            assert wait_until(lambda: fc.snapshot()["pi-07"].version == "1.1.0", 10)  # the retained state was refreshed
            r = deploy(fc, Release.open(releases["nan"]), key=signer, devices=["pi-07"], policy=RolloutPolicy(device_timeout_s=30, chunk_size=2048))
            o = r.outcomes["pi-07"]
            assert (o["state"], o["reason"]) == ("FAILED", "nan_outputs")
            daemon.publish_telemetry()  # the status table's latency, requests and outbox come from telemetry
            assert wait_until(lambda: fc.snapshot()["pi-07"].telemetry is not None, 10)
            row = status_rows(fc.snapshot())[0]
        assert (row["device"], row["online"], row["version"], row["job_state"], row["job_reason"]) == \
            ("pi-07", True, "1.1.0", "FAILED", "nan_outputs")
        assert row["requests"] > 0 and row["p95_ms"] > 0 and isinstance(row["outbox"], int)
        assert daemon.agent.model.version == "1.1.0"
        ota = daemon.agent.health()["ota"]  # GET /healthz
        assert (ota["state"], ota["current"], ota["previous"]) == ("IDLE", "1.1.0", "1.0.0")
        assert [h["state"] for h in ota["history"]] == ["COMMITTED", "ROLLED_BACK"]
        assert "edgekit_agent_model_info" in daemon.agent.metrics.render() and 'version="1.1.0"' in daemon.agent.metrics.render()
    finally:
        load.stop()
        daemon.stop()
    assert load.failed == 0 and load.done > 0
    assert load.versions <= {"1.0.0", "1.1.0", "1.5.0"}
    # every swap closed the old model's telemetry window: each window is one version's, none is lost
    telemetry.wait_for(lambda c: len(c.payloads("telemetry")) >= 3, 10, "the telemetry windows")
    windows = [(m["model"]["version"], m["requests"]) for m in telemetry.payloads("telemetry")]
    assert {v for v, _ in windows} >= {"1.0.0", "1.1.0"}
    assert sum(n for _, n in windows) >= load.done

    again = Daemon.from_config(cfg)  # a restart serves what was committed, from the store
    try:
        assert again.agent.model.version == "1.1.0"
        assert again.updater.store.check() == []
    finally:
        again.stop()


def test_unreadable_command_with_a_job_id_is_answered(tmp_path, mosquitto, releases, keys, mqtt_collector):
    import paho.mqtt.publish as publish

    c = mqtt_collector(mosquitto, ["edgekit/v1/+/jobs/+"])
    daemon = Daemon.from_config(config(tmp_path, mosquitto, releases["v1"], keys["good"].public))
    daemon.start()
    try:
        wait_until(lambda: daemon.link.connected, 10)
        time.sleep(0.2)
        bad = {"v": 99, "type": "command", "device": "pi-07", "kind": "deploy", "job": "j-future", "ts": 1.0, "params": {}}
        publish.single("edgekit/v1/pi-07/cmd", json.dumps(bad), qos=1, hostname=mosquitto.host, port=mosquitto.port)
        c.wait_for(lambda c: c.payloads("jobs/j-future"), 10, "the rejection")
    finally:
        daemon.stop()
    job = c.payloads("jobs/j-future")[0]
    assert (job["state"], job["reason"]) == ("REJECTED", "bad_command")
    assert [r for t, _, r in c.messages if t.endswith("jobs/j-future")] == [False] and job["seq"] == 0  # answered once, not retained
    assert "protocol version 99 is not supported" in job["detail"]
    assert daemon.agent.model.version == "1.0.0"
