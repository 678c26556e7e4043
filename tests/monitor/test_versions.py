"""Fleet status versions (issue 19): agent and runtime per device in the store (both backends), fleet status columns and filters."""

from __future__ import annotations

import json
import sqlite3
import time

import numpy as np
import pytest
from click.testing import CliRunner

from device_agent.contract.protocol import DeviceStatus, StateMessage, TelemetryMessage, encode
from device_agent.contract.runtimes import RuntimeCheck, RuntimeStatus
from edgekit.cli.main import cli
from edgekit.fleet.versions import runtime_matches
from edgekit.monitor.store import DeviceQuery, open_store
from edgekit.monitor.store.schema import LATEST, SQLITE
from tests.monitor.test_store import state, url, window  # noqa: F401  (url: the fixture over both backends)


def check(installed: str, validated: str | None, status: RuntimeStatus, runtime: str = "onnxruntime") -> RuntimeCheck:
    return RuntimeCheck(runtime, "onnxruntime" if runtime == "onnxruntime" else "ai-edge-litert", installed, validated, status,
                        detail=f"{runtime} {installed} runs here; the model was validated with {validated}")


def born(device: str, *, agent: str, rc: RuntimeCheck | None, boot: int = 1, seq: int = 0, status: DeviceStatus = DeviceStatus.ONLINE,
         installed: str = "1.27.0") -> StateMessage:
    return StateMessage(device, status, time.time(), boot, agent, "cams", {"name": "mlp", "version": "1.0.0", "runtime": "onnxruntime"},
                        runtime={"onnxruntime": rc.installed if rc and rc.installed else installed}, seq=seq, runtime_check=rc)


def tel(msg: TelemetryMessage, *, agent: str, rc: RuntimeCheck | None) -> TelemetryMessage:
    return TelemetryMessage(**{**vars(msg), "agent_version": agent, "runtime": {"onnxruntime": rc.installed if rc else ""},
                               "runtime_check": rc})


@pytest.fixture
def fleet(url):  # noqa: F811
    """Five devices: matching, drifting, mismatched (telemetry says so, later than the birth), refused, an old agent (no check)."""
    store = open_store(url, holder="test-v")
    rng = np.random.default_rng(3)
    store.record_states([
        born("d1", agent="0.9.0", rc=check("1.32.1", "1.32.0", RuntimeStatus.MATCH)),
        born("d2", agent="0.9.0", rc=check("1.31.0", "1.32.0", RuntimeStatus.DRIFT)),
        born("d3", agent="0.9.0", rc=check("1.32.0", "1.32.0", RuntimeStatus.MATCH)),
        born("d4", agent="0.9.1", rc=check("2.19.0", "2.21.0", RuntimeStatus.REFUSED, runtime="litert")),
        StateMessage("d5", DeviceStatus.ONLINE, time.time(), 1, "0.8.0", "cams", {"name": "mlp", "version": "1.0.0"}),
    ])
    now = time.time()
    store.add_batch([(m, encode(m)) for m in [
        tel(window("d3", 1, now, rng=rng), agent="0.9.1", rc=check("1.27.0", "1.32.0", RuntimeStatus.MISMATCH)),  # upgraded agent
        tel(window("d5", 1, now, rng=rng), agent="", rc=None),  # an agent from before versions in telemetry: nothing changes
    ]], collector="c")
    yield store
    store.close()


def test_the_store_keeps_each_devices_agent_and_runtime_from_state_and_telemetry(fleet):
    rows = {r.device: r for r in fleet.device_page(DeviceQuery()).rows}
    got = {d: (r.agent_version, r.runtime, r.runtime_validated, r.runtime_status) for d, r in rows.items()}
    assert got == {"d1": ("0.9.0", "onnxruntime 1.32.1", "1.32.0", "match"),
                   "d2": ("0.9.0", "onnxruntime 1.31.0", "1.32.0", "drift"),
                   "d3": ("0.9.1", "onnxruntime 1.27.0", "1.32.0", "mismatch"),
                   "d4": ("0.9.1", "litert 2.19.0", "2.21.0", "refused"),
                   "d5": ("0.8.0", None, None, None)}
    assert rows["d3"].runtime_detail == "onnxruntime 1.27.0 runs here; the model was validated with 1.32.0"
    assert fleet.device("d4").runtime == "litert 2.19.0"  # the device record carries them too


def test_a_last_will_or_an_older_message_keeps_the_known_runtime(fleet):
    fleet.record_states([born("d1", agent="0.9.0", rc=None, seq=9, status=DeviceStatus.OFFLINE, installed="1.32.1")])  # the Last Will
    fleet.record_states([born("d2", agent="0.7.0", rc=check("1.20.0", "1.32.0", RuntimeStatus.MISMATCH), boot=0)])  # a previous boot
    rows = {r.device: r for r in fleet.device_page(DeviceQuery()).rows}
    assert (rows["d1"].status, rows["d1"].runtime, rows["d1"].runtime_status) == ("offline", "onnxruntime 1.32.1", "match")
    assert (rows["d2"].agent_version, rows["d2"].runtime_status) == ("0.9.0", "drift")
    fleet.record_states([born("d3", agent="0.9.2", rc=check("1.32.0", "1.32.0", RuntimeStatus.MATCH), boot=2)])  # rebooted, fixed
    assert fleet.device("d3").runtime_status == "match" and fleet.device("d3").agent_version == "0.9.2"


@pytest.mark.parametrize(("query", "devices"), [
    (DeviceQuery(agent_version="0.9.1"), ["d3", "d4"]),
    (DeviceQuery(runtime="onnxruntime"), ["d1", "d2", "d3"]),
    (DeviceQuery(runtime="onnxruntime 1.32"), ["d1"]),
    (DeviceQuery(runtime="onnxruntime==1.27.0"), ["d3"]),
    (DeviceQuery(runtime="onnx"), []),  # a name, not a prefix
    (DeviceQuery(runtime="litert 2.19.0"), ["d4"]),
    (DeviceQuery(runtime_status="mismatch"), ["d3"]),
    (DeviceQuery(runtime_status="none"), ["d5"]),
    (DeviceQuery(runtime="onnxruntime", runtime_status="match", limit=1), ["d1"]),
])
def test_device_page_filters_by_agent_runtime_and_runtime_status(fleet, query, devices):
    assert [r.device for r in fleet.device_page(query).rows] == devices


def test_runtime_matches_as_the_stores_filter():
    assert runtime_matches("onnxruntime 1.27.0", "onnxruntime 1.27") and runtime_matches("onnxruntime 1.27.0", "onnxruntime")
    assert not runtime_matches("onnxruntime 1.270.0", "onnxruntime 1.27") and not runtime_matches(None, "onnxruntime")
    assert not runtime_matches("onnxruntime 1.27.0", "onnx")


def test_a_version_2_database_is_migrated_to_carry_runtimes(tmp_path):
    path = tmp_path / "v2.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied DOUBLE PRECISION NOT NULL, description TEXT NOT NULL)")
    for v in (1, 2):
        for statement in SQLITE[v][1]:
            db.execute(statement)
        db.execute("INSERT INTO schema_version VALUES (?, 0, ?)", (v, SQLITE[v][0]))
    db.execute("INSERT INTO devices (device, grp, status, last_seen, agent_version) VALUES ('old-1', 'g', 'online', 1.0, '0.5.0')")
    db.commit()
    db.close()
    store = open_store(path)
    try:
        (row,) = store.device_page(DeviceQuery()).rows
        assert (row.device, row.agent_version, row.runtime, row.runtime_status) == ("old-1", "0.5.0", None, None)
        store.record_states([born("old-1", agent="0.9.0", rc=check("1.32.0", "1.32.0", RuntimeStatus.MATCH))])
        assert store.device("old-1").runtime == "onnxruntime 1.32.0"
        with store._read() as r:
            assert [v for (v,) in r.rows("SELECT version FROM schema_version ORDER BY version")] == list(range(1, LATEST + 1))
    finally:
        store.close()


def test_fleet_status_shows_and_filters_versions(tmp_path):
    db = tmp_path / "fleet.sqlite"
    store = open_store(db)
    try:
        store.record_states([born("d1", agent="0.9.0", rc=check("1.32.1", "1.32.0", RuntimeStatus.MATCH)),
                             born("d3", agent="0.9.1", rc=check("1.27.0", "1.32.0", RuntimeStatus.MISMATCH))])
    finally:
        store.close()
    r = CliRunner().invoke(cli, ["fleet", "status", "--db", str(db)])
    assert r.exit_code == 0, r.output
    header, *lines = r.output.splitlines()
    assert header.index("drift") < header.index("agent") < header.index("runtime") < header.index("validated") < header.index("runtime status")
    assert lines[1].split()[-5:] == ["0.9.1", "onnxruntime", "1.27.0", "1.32.0", "mismatch"]
    r = CliRunner().invoke(cli, ["fleet", "status", "--db", str(db), "--runtime-status", "mismatch", "--json"])
    (row,) = json.loads(r.output)
    assert (row["device"], row["agent_version"], row["runtime"], row["runtime_validated"], row["runtime_status"]) == \
        ("d3", "0.9.1", "onnxruntime 1.27.0", "1.32.0", "mismatch")
    assert "validated with 1.32.0" in row["runtime_detail"]
    r = CliRunner().invoke(cli, ["fleet", "status", "--db", str(db), "--agent-version", "0.9.0", "--runtime", "onnxruntime 1.32", "--json"])
    assert [x["device"] for x in json.loads(r.output)] == ["d1"]
    r = CliRunner().invoke(cli, ["fleet", "status", "--db", str(db), "--runtime-status", "sideways"])
    assert r.exit_code == 2 and "'sideways' is not one of 'match', 'drift', 'mismatch', 'refused', 'unknown', 'none'" in r.output


def test_the_census_counts_devices_verdicts_and_alerts(fleet):
    from edgekit.monitor.store import DriftState

    counts = {(c.agent_version, c.runtime, c.runtime_status): c.devices for c in fleet.device_counts()}
    assert counts == {("0.9.0", "onnxruntime 1.32.1", "match"): 1, ("0.9.0", "onnxruntime 1.31.0", "drift"): 1,
                      ("0.9.1", "onnxruntime 1.27.0", "mismatch"): 1, ("0.9.1", "litert 2.19.0", "refused"): 1, ("0.8.0", None, None): 1}
    assert {(c.group, c.model, c.version, c.status) for c in fleet.device_counts()} == {("cams", "mlp", "1.0.0", "online")}
    fleet.set_drift_states([(("group", "cams", "mlp", "1.0.0"), [DriftState("x[1]", "alert", 1.0, 2.0, 0.4), DriftState("x[0]", "ok", 1.0, 2.0, 0.01)]),
                            (("device", "d1", "mlp", "1.0.0"), [DriftState("x[0]", "warn", 1.0, 2.0, 0.12)])])
    assert [(v.name, v.feature, v.level, v.psi) for v in fleet.verdicts("group")] == [("cams", "x[0]", "ok", 0.01), ("cams", "x[1]", "alert", 0.4)]
    for level in ("warn", "alert", "alert"):
        fleet.add_alert({"kind": "drift", "scope": "group", "name": "cams", "level": level, "model": {"name": "mlp", "version": "1"}})
    fleet.add_alert({"kind": "drift", "scope": "device", "name": "d1", "level": "warn", "model": {}}, ts=time.time() - 7200)
    assert [(a.kind, a.scope, a.level, a.alerts) for a in fleet.alert_counts(since=time.time() - 3600)] == \
        [("drift", "group", "alert", 2), ("drift", "group", "warn", 1)]


def test_a_real_agent_on_another_runtime_than_validated_shows_in_fleet_status_over_the_broker(mosquitto, model_dir, make_device, tmp_path):
    import shutil

    from edgekit.monitor.collector import Collector
    from tests.conftest import wait_until
    from tests.monitor.conftest import reference_inputs
    from tests.monitor.test_collector import Publisher

    old = tmp_path / "validated-on-1.0"
    shutil.copytree(model_dir, old)
    doc = json.loads((old / "edgekit.json").read_text())
    (old / "edgekit.json").write_text(json.dumps({**doc, "tools": {"onnxruntime": "1.0.0"}}))  # as if validated on onnxruntime 1.0
    far, near = make_device(old, device="pi-far"), make_device(model_dir, device="pi-near")
    c = Collector(mosquitto.url, tmp_path / "fleet.sqlite", collector_id="watch-v")
    c.start()
    pub = Publisher(mosquitto)
    try:
        assert c.wait_ready(10)
        pub.publish([far.state(), near.state()], retain=True)
        pub.publish(far.window(reference_inputs(100, np.random.default_rng(0))))
        wait_until(lambda: c.monitor.stats["telemetry"] == 1 and len(c.store.devices()) == 2, 15, what="states and the window stored")
        r = CliRunner().invoke(cli, ["fleet", "status", "--broker", mosquitto.url, "--runtime-status", "mismatch", "--json"])
        assert r.exit_code == 0, r.output
        (row,) = json.loads(r.output)
        installed = far.agent.model.runtime_check.installed
        assert (row["device"], row["runtime"], row["runtime_validated"], row["runtime_status"], row["agent_version"]) == \
            ("pi-far", f"onnxruntime {installed}", "1.0.0", "mismatch", far.daemon.state_message(DeviceStatus.ONLINE).agent_version)
        assert "1.0.0" in row["runtime_detail"]
        r = CliRunner().invoke(cli, ["fleet", "status", "--broker", mosquitto.url, "--runtime", "onnxruntime", "--json"])
        assert sorted(x["device"] for x in json.loads(r.output)) == ["pi-far", "pi-near"]
    finally:
        pub.close()
        c.stop()
