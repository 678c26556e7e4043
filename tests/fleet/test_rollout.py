"""Rollouts against simulated devices on a real Mosquitto: waves, aborts, gate, timeouts, rollback."""

from __future__ import annotations

import json
import shutil

import pytest

from device_agent.contract.manifest import load_manifest
from edgekit.errors import FleetError, InputError
from edgekit.fleet.client import FleetClient
from edgekit.fleet.jobs import Release
from edgekit.fleet.rollout import Gate, Journal, RolloutPolicy, check_metrics, deploy, plan_waves, rollback
from edgekit.fleet.status import status_rows
from edgekit.signing import load_private_key, sign_dir

pytestmark = pytest.mark.slow

FAST = dict(device_timeout_s=30.0, chunk_size=2048)


def test_plan_waves_counts_and_shares():
    devs = [f"d{i}" for i in range(20)]
    assert [len(w) for w in plan_waves(devs, ["1", "10%", "50%", "100%"])] == [1, 1, 8, 10]
    assert [len(w) for w in plan_waves(devs, ["5"])] == [5, 15]  # the last wave always reaches everyone
    assert [len(w) for w in plan_waves(devs[:3], ["1", "10%", "50%", "100%"])] == [1, 1, 1]
    assert sum(plan_waves(devs, ["30%", "30%", "100%"]), []) == devs
    with pytest.raises(InputError, match="'150%' is not a count"):
        plan_waves(devs, ["150%"])


def test_metric_gate(releases, tmp_path):
    old = load_manifest(releases["v1"])
    d = tmp_path / "worse"
    shutil.copytree(releases["v2"], d)
    doc = json.loads((d / "edgekit.json").read_text())
    doc["metrics"]["mlp.onnx"] = {"accuracy": 85.0, "latency_p50_ms": 0.05}
    (d / "edgekit.json").write_text(json.dumps(doc))
    problems = check_metrics(load_manifest(d), old, Gate())
    assert len(problems) == 2
    assert "accuracy 85.00% vs 90.00%" in problems[0] and "-5.00 pts" in problems[0]
    assert "2.50x" in problems[1]
    assert check_metrics(load_manifest(releases["v2"]), old, Gate()) == []


def test_rollout_in_waves_updates_every_device(sim_fleet, signer, mosquitto, releases, tmp_path):
    devs = sim_fleet(6)
    with FleetClient(mosquitto.url) as fc:
        lines = []
        r = deploy(fc, Release.open(releases["v2"]), key=signer, group="cams", policy=RolloutPolicy(waves=("1", "50%", "100%"), **FAST),
                   journal=Journal(tmp_path / "journal"), progress=lines.append)
        assert r.aborted is None and r.succeeded == 6 and r.failed == 0
        assert [len(w) for w in r.waves] == [1, 2, 3]
        assert {o["wave"] for o in r.outcomes.values()} == {1, 2, 3}
        assert lines[0].startswith("metric gate: no manifest recorded for the served mlp 1.0.0") and "--baseline DIR" in lines[0]
        assert lines[1] == "wave 1/3: 1 device(s)"
        fc.settle(1.0)
        rows = status_rows(fc.snapshot(), group="cams")
    assert [(x["device"], x["online"], x["version"], x["job_state"]) for x in rows] == [(d.topics.device, True, "1.1.0", "SUCCEEDED") for d in devs]
    assert all(d.store.current == "1.1.0" and d.store.check() == [] for d in devs)
    assert (tmp_path / "journal" / "rollouts" / f"{r.job}.json").is_file()
    assert (tmp_path / "journal" / "manifests" / "mlp" / "1.1.0.json").is_file()


def test_broken_canaries_abort_the_rollout_after_the_first_wave(sim_fleet, signer, mosquitto, releases):
    devs = sim_fleet(10, faulty=(0, 2))  # 2 of the 4 canaries get a broken model
    with FleetClient(mosquitto.url) as fc:
        r = deploy(fc, Release.open(releases["v2"]), key=signer, group="cams", policy=RolloutPolicy(waves=("40%", "100%"), max_failures="20%",
                                                                                          min_devices=3, **FAST))
    assert r.aborted is not None and r.aborted.startswith("aborted after wave 1: 2 of 4 finished devices failed")
    assert "6 device(s) in later waves were not updated" in r.aborted
    assert {d for d, o in r.outcomes.items() if o["state"] != "SUCCEEDED"} == {"pi-00", "pi-02"}
    assert all(o["reason"] == "nan_outputs" for d, o in r.outcomes.items() if d in ("pi-00", "pi-02"))
    versions = {d.topics.device: d.serving.get().version for d in devs}
    assert versions["pi-00"] == versions["pi-02"] == "1.0.0"  # the broken canaries kept serving their model
    assert versions["pi-01"] == versions["pi-03"] == "1.1.0"
    assert all(versions[f"pi-{i:02d}"] == "1.0.0" for i in range(4, 10))  # never sent


def test_metric_gate_refuses_a_worse_release_unless_forced(sim_fleet, signer, mosquitto, releases, keys, tmp_path):
    sim_fleet(2)
    worse = tmp_path / "worse"
    shutil.copytree(releases["v2"], worse)
    doc = json.loads((worse / "edgekit.json").read_text())
    doc["metrics"]["mlp.onnx"]["accuracy"] = 80.0
    (worse / "edgekit.json").write_text(json.dumps(doc))
    sign_dir(worse, keys["good"].private)
    journal = Journal(tmp_path / "journal")
    v1 = load_manifest(releases["v1"])
    journal.save_manifest(v1, (releases["v1"] / "edgekit.json").read_bytes())  # shipped earlier: the served version's card
    with FleetClient(mosquitto.url) as fc:
        with pytest.raises(FleetError, match=r"refusing to deploy mlp 1.1.0: .*accuracy 80.00% vs 90.00% .*pass --force"):
            deploy(fc, Release.open(worse), key=signer, group="cams", policy=RolloutPolicy(**FAST), journal=journal)
        assert all(v.version == "1.0.0" for v in fc.snapshot().values())  # nothing was sent
        r = deploy(fc, Release.open(worse), key=signer, group="cams", policy=RolloutPolicy(**FAST), journal=journal, gate=None)
    assert r.succeeded == 2


def test_device_that_never_answers_times_out(sim_fleet, signer, mosquitto, releases):
    devs = sim_fleet(2)
    devs[1].updater._stop.set()  # online, but its updater is wedged
    devs[1].updater._thread.join(5)
    with FleetClient(mosquitto.url) as fc:
        r = deploy(fc, Release.open(releases["v2"]), key=signer, group="cams",
                   policy=RolloutPolicy(max_failures="1", device_timeout_s=3.0, chunk_size=2048))
    assert r.outcomes["pi-00"]["state"] == "SUCCEEDED"
    assert (r.outcomes["pi-01"]["state"], r.outcomes["pi-01"]["reason"]) == ("TIMED_OUT", "fleet_timeout")
    assert r.aborted is None  # 1 failure is within --max-failures 1


def test_signed_rollback_of_a_group(sim_fleet, signer, mosquitto, releases, keys):
    devs = sim_fleet(3)
    with FleetClient(mosquitto.url) as fc:
        assert deploy(fc, Release.open(releases["v2"]), key=signer, group="cams", policy=RolloutPolicy(**FAST)).succeeded == 3
        out = rollback(fc, key=load_private_key(keys["good"].private), group="cams", timeout_s=20)
        assert {o["state"] for o in out.values()} == {"SUCCEEDED"}
        bad = rollback(fc, key=load_private_key(keys["other"].private), devices=["pi-00"], timeout_s=20)
    assert (bad["pi-00"]["state"], bad["pi-00"]["reason"]) == ("REJECTED", "untrusted_key")
    assert [d.serving.get().version for d in devs] == ["1.0.0"] * 3


def test_mqtt_delivery_that_would_flood_the_broker_is_refused(sim_fleet, signer, mosquitto, releases, monkeypatch):
    import edgekit.fleet.rollout as rollout

    sim_fleet(3)
    monkeypatch.setattr(rollout, "MQTT_RETAINED_BUDGET", 10_000)  # the release is ~6 kB: 3 devices at once exceed 10 kB
    with FleetClient(mosquitto.url) as fc:
        with pytest.raises(FleetError, match=r"retained chunks on the broker at once .* use --delivery http"):
            deploy(fc, Release.open(releases["v2"]), key=signer, group="cams", policy=RolloutPolicy(**FAST))
        assert all(v.version == "1.0.0" and not v.jobs for v in fc.snapshot().values())


def test_rollout_with_http_delivery(sim_fleet, signer, mosquitto, releases, tmp_path):
    import functools
    import http.server
    import threading

    www = tmp_path / "www"
    shutil.copytree(releases["v2"], www / "v2")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        devs = sim_fleet(3)
        with FleetClient(mosquitto.url) as fc:
            r = deploy(fc, Release.open(releases["v2"]), key=signer, group="cams",
                       policy=RolloutPolicy(method="http", base_url=f"http://127.0.0.1:{srv.server_address[1]}/v2", device_timeout_s=30))
        assert r.succeeded == 3
        assert all(d.serving.get().version == "1.1.0" for d in devs)
    finally:
        srv.shutdown()
        srv.server_close()
