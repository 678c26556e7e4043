"""The operator's commands through CliRunner: keys, sign, fleet deploy/status/jobs/rollback/cancel."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from edgekit.cli.main import cli

pytestmark = pytest.mark.slow


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_keys_generate_and_sign_and_verify(tmp_path, releases):
    r = run("keys", "generate", "-o", tmp_path / "k", "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert (tmp_path / "k" / "edgekit.key").stat().st_mode & 0o777 == 0o600
    again = run("keys", "generate", "-o", tmp_path / "k")
    assert again.exit_code == 1 and "refusing to overwrite a key" in again.output
    out = tmp_path / "out"
    shutil.copytree(releases["unsigned"], out)
    r = run("sign", out, "--key", tmp_path / "k" / "edgekit.key")
    assert r.exit_code == 0 and f"(key {info['key_id']})" in r.output
    r = run("sign", out, "--verify", tmp_path / "k" / "edgekit.pub")
    assert r.exit_code == 0 and "signature valid" in r.output
    (out / "mlp.onnx").write_bytes(b"swapped")  # tampered after signing
    r = run("sign", out, "--verify", tmp_path / "k" / "edgekit.pub")
    assert r.exit_code == 1 and "artifact mlp.onnx is 7 bytes; the manifest says" in r.output
    assert run("sign", out).exit_code == 2  # usage: no key


def test_fleet_deploy_status_jobs_rollback(sim_fleet, mosquitto, releases, keys, tmp_path):
    sim_fleet(3)
    common = ["--broker", mosquitto.url, "--state-dir", tmp_path / "fleet"]
    r = run("fleet", "deploy", releases["v2"], *common, "--group", "cams", "--waves", "1,100%", "--timeout", "30", "--chunk-size", "2048",
            "--key", keys["good"].private, "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["succeeded"] == 3 and res["aborted"] is None
    job = res["job"]

    r = run("fleet", "status", *common, "--json", "--wait", "1")
    rows = json.loads(r.output)
    assert [(x["device"], x["online"], x["version"], x["job_state"]) for x in rows] == [(f"pi-0{i}", True, "1.1.0", "SUCCEEDED") for i in range(3)]
    text = run("fleet", "status", *common, "--wait", "1").output
    assert text.splitlines()[0].split() == ["device", "online", "model", "version", "job", "state", "last", "seen", "p95", "ms", "requests",
                                            "outbox", "drift", "agent", "runtime", "validated", "runtime", "status"]
    assert {x["agent_version"] for x in rows} == {"0.1.0"}  # from the retained states (no collector runs here)

    r = run("fleet", "jobs", *common, "--job", job, "--json", "--wait", "1")
    doc = json.loads(r.output)
    assert {x["state"] for x in doc["jobs"]} == {"SUCCEEDED"} and len(doc["jobs"]) == 3
    assert doc["rollouts"][0]["job"] == job

    r = run("fleet", "rollback", *common, "--device", "pi-01", "--key", keys["good"].private, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["pi-01"]["state"] == "SUCCEEDED"


def test_fleet_deploy_reports_an_abort_with_exit_1(sim_fleet, mosquitto, releases, keys, tmp_path):
    sim_fleet(4, faulty=(0,))
    r = run("fleet", "deploy", releases["v2"], "--broker", mosquitto.url, "--state-dir", tmp_path / "f", "--group", "cams",
            "--waves", "1,100%", "--max-failures", "0", "--timeout", "30", "--chunk-size", "2048", "--key", keys["good"].private)
    assert r.exit_code == 1
    assert "ROLLOUT ABORTED: aborted after wave 1: 1 of 1 finished devices failed" in r.output
    assert "nan_outputs" in r.output


@pytest.mark.parametrize(("args", "words"), [
    (["--device", "x", "--group", "g"], "pass --device ID (repeatable) or --group NAME, not both"),
    (["--group", "g", "--waves", "1,abc"], "--waves entry 'abc' is not a count"),
])
def test_fleet_deploy_usage_errors(releases, args, words, tmp_path):
    r = run("fleet", "deploy", releases["v2"], "--broker", "mqtt://127.0.0.1:1", "--state-dir", tmp_path, *args)
    assert r.exit_code in (1, 2) and words in r.output


def test_fleet_deploy_without_a_key_is_refused_by_devices_that_need_signatures(sim_fleet, mosquitto, releases, tmp_path):
    sim_fleet(1)
    r = run("fleet", "deploy", releases["v2"], "--broker", mosquitto.url, "--state-dir", tmp_path / "f", "--device", "pi-00",
            "--timeout", "30", "--chunk-size", "2048")
    assert r.exit_code == 1
    assert "warning: no --key: the deploy commands are not signed" in r.output
    assert "unsigned" in r.output and "pass --key to `edgekit fleet deploy`" in r.output


def test_fleet_unreachable_broker_is_one_clean_line(releases, tmp_path):
    r = run("fleet", "status", "--broker", "mqtt://127.0.0.1:1", "--state-dir", tmp_path)
    assert r.exit_code == 1
    assert r.output.startswith("error: cannot reach the broker at 127.0.0.1:1")


def test_compress_sign_deploy_cancel_end_to_end(tmp_path, mosquitto):
    """The operator's whole path on real `edgekit compress` output (.onnx + .ort + extras)."""
    import numpy as np
    import onnx

    from device_agent.ota.verify import load_trusted_keys
    from tests.conftest import build_mlp
    from tests.fleet.conftest import SIM_SETTINGS
    from tests.fleet.sim import SimDevice, Traffic

    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(1).standard_normal((64, 16)).astype(np.float32))
    outs = {}
    for version, seed in (("2.0.0", 0), ("2.1.0", 1)):
        onnx.save(build_mlp(seed=seed), tmp_path / f"m{seed}.onnx")
        outs[version] = tmp_path / f"out-{version}"
        r = run("compress", "--int8", "--data", tmp_path / "calib.npz", "--search-time", "5", "--version", version, "--name", "mlp",
                "-o", outs[version], tmp_path / f"m{seed}.onnx")
        assert r.exit_code == 0, r.output
    assert run("keys", "generate", "-o", tmp_path / "keys").exit_code == 0
    for d in outs.values():
        assert run("sign", d, "--key", tmp_path / "keys" / "edgekit.key").exit_code == 0
    dev = SimDevice("cam-01", tmp_path / "cam-01", outs["2.0.0"], broker_port=mosquitto.port,
                    trusted=load_trusted_keys([tmp_path / "keys" / "edgekit.pub"]), group="cams", settings=SIM_SETTINGS)
    try:
        assert dev.connected.wait(10)
        assert dev.serving.get().file.suffix == ".ort"
        common = ["--broker", mosquitto.url, "--state-dir", tmp_path / "fleet"]
        with Traffic([dev], rate=200):
            r = run("fleet", "deploy", outs["2.1.0"], *common, "--device", "cam-01", "--timeout", "60", "--json", "--key",
                    tmp_path / "keys" / "edgekit.key")
        assert r.exit_code == 0, r.output
        assert json.loads(r.output)["outcomes"]["cam-01"]["state"] == "SUCCEEDED"
        assert dev.serving.get().version == "2.1.0" and dev.store.check() == []
        assert sorted(p.name for p in dev.store.path("2.1.0").iterdir()) == ["edgekit.json", "edgekit.json.sig", "m1.int8.onnx", "m1.int8.ort"]
        r = run("fleet", "cancel", "no-such-job", *common, "--device", "cam-01", "--key", tmp_path / "keys" / "edgekit.key")
        assert r.exit_code == 0 and "sent to 1 device(s)" in r.output
        r = run("fleet", "jobs", *common, "--json", "--wait", "1")
        cancels = [j for j in json.loads(r.output)["jobs"] if j["job"].startswith("cancel-")]
        assert [(j["state"], j["reason"]) for j in cancels] == [("REJECTED", "unknown_job")]
    finally:
        dev.stop()
