"""`edgekit agent bundle` and deploy/install.sh: the Pi install path, in temporary directories."""

import json
import signal
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tomllib
from click.testing import CliRunner

from edgekit.cli.main import cli
from tests.agent.agent_helpers import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def agent_wheel(tmp_path_factory) -> Path:
    from device_agent.bundle import find_wheel

    return find_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="session")
def wheelhouse(request) -> Path:
    """The agent's dependency wheels for this machine (pip download once, cached between runs)."""
    from device_agent.bundle import agent_requirements

    reqs = agent_requirements()
    cache = Path(request.config.cache.mkdir("edgekit-agent-wheelhouse"))
    marker = cache / "requirements.txt"
    if not (marker.is_file() and marker.read_text() == "\n".join(reqs)):
        r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "-d", str(cache), *reqs], capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            pytest.skip(f"cannot download the agent's dependency wheels (no package index?): {r.stderr.strip().splitlines()[-1:]}")
        marker.write_text("\n".join(reqs))
    return cache


def bundle(tmp_path, digits_dir, wheel, *args):
    out = tmp_path / "pi-07.tar.gz"
    r = CliRunner().invoke(cli, ["agent", "bundle", "--device-id", "pi-07", "--model", str(digits_dir), "--wheel", str(wheel), "-o", str(out),
                                 "--json", *args])
    return r, out


def test_bundle_contents_config_and_permissions(tmp_path, digits_dir, agent_wheel, tls_files):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "release.pub").write_bytes(ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    r, out = bundle(tmp_path, digits_dir, agent_wheel, "--broker", "mqtts://broker.lan:8883", "--group", "lab", "--ca", str(tls_files["ca"]),
                    "--cert", str(tls_files["client_cert"]), "--key", str(tls_files["client_key"]), "--username", "pi-07",
                    "--password-file", str(tmp_path / "pw"), "--trusted-key", str(tmp_path / "release.pub"), "--set", "telemetry.interval_s=30", "--set", "api.port=8471")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
        members = {m.name: m for m in tar.getmembers()}
        config = tar.extractfile("agent.toml").read().decode()
        reqs = tar.extractfile("requirements.txt").read().decode().split()
    assert {"install.sh", "edgekit-agent.service", "agent.toml", "requirements.txt", "BUNDLE.json", "model/edgekit.json",
            "certs/ca.pem", "certs/client.pem", "certs/client.key", "secrets/broker-password", "keys/00-release.pub", f"wheels/{agent_wheel.name}"} <= names
    assert any(n.endswith(".ort") for n in names) and any(n.endswith(".onnx") for n in names)
    assert members["install.sh"].mode == 0o755 and members["certs/client.key"].mode == 0o600 and members["secrets/broker-password"].mode == 0o600
    doc = tomllib.loads(config)
    assert doc["device"] == {"id": "pi-07", "group": "lab"} and doc["broker"]["url"] == "mqtts://broker.lan:8883"
    assert doc["broker"]["ca_file"] == "@CONFIG_DIR@/certs/ca.pem" and doc["model"]["path"] == "@STATE_DIR@/model"
    assert doc["telemetry"]["interval_s"] == 30 and doc["api"]["port"] == 8471
    assert doc["security"]["trusted_keys"] == ["@CONFIG_DIR@/keys/00-release.pub"]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    from packaging.requirements import Requirement

    def norm(items):
        return sorted((Requirement(r).name, str(Requirement(r).specifier)) for r in items)

    assert norm(reqs) == norm(pyproject["project"]["optional-dependencies"]["agent"])  # the device gets exactly the agent extra
    assert summary["device"] == "pi-07" and summary["wheels"] == [agent_wheel.name]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--broker", "mqtt://b:1883", "--ca", "ca.pem"], "--ca/--cert/--key need an mqtts:// broker URL"),
        (["--broker", "mqtts://b", "--cert", "c.pem"], "--cert and --key go together"),
        (["--broker", "htp://b"], "[broker] url 'htp://b' has scheme 'htp'"),
        (["--set", "api.prot=1"], "[api] has unknown key 'prot'"),
        (["--set", "nonsense"], "use SECTION.KEY=VALUE"),
    ],
)
def test_bundle_refuses_bad_input(tmp_path, digits_dir, agent_wheel, args, message):
    r, out = bundle(tmp_path, digits_dir, agent_wheel, *args)
    assert r.exit_code in (1, 2), r.output
    assert message in r.output
    assert not out.exists()


def test_bundle_refuses_a_tampered_model(tmp_path, digits_copy, agent_wheel):
    art = next(digits_copy.glob("*.onnx"))
    art.write_bytes(art.read_bytes() + b"\0")
    r, _ = bundle(tmp_path, digits_copy, agent_wheel)
    assert r.exit_code == 1 and "bytes; the manifest says" in r.output


@pytest.mark.slow
def test_install_script_makes_a_working_agent(tmp_path, digits_dir, digits, agent_wheel, wheelhouse, mosquitto, mqtt_collector):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = tmp_path / "release.pub"
    key.write_bytes(ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(serialization.Encoding.PEM,
                                                                                 serialization.PublicFormat.SubjectPublicKeyInfo))
    port = free_port()
    r, out = bundle(tmp_path, digits_dir, agent_wheel, "--broker", mosquitto.url, "--set", f"api.port={port}", "--trusted-key", str(key),
                    "--set", "telemetry.interval_s=0.5", "--set", "broker.reconnect_min_s=0.1")
    assert r.exit_code == 0, r.output
    b = tmp_path / "bundle"
    with tarfile.open(out) as tar:
        tar.extractall(b, filter="data")
    for w in wheelhouse.glob("*.whl"):  # what --with-deps would ship, for this machine
        (b / "wheels" / w.name).write_bytes(w.read_bytes())
    root = tmp_path / "root"
    dirs = {"prefix": root / "opt/edgekit-agent", "config": root / "etc/edgekit", "state": root / "var/lib/edgekit", "unit": root / "etc/systemd/system"}
    cmd = ["bash", str(b / "install.sh"), "--prefix", str(dirs["prefix"]), "--config-dir", str(dirs["config"]), "--state-dir", str(dirs["state"]),
           "--unit-dir", str(dirs["unit"]), "--python", sys.executable, "--offline", "--no-user", "--no-systemd"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "self-test: passed" in res.stdout
    venv = dirs["prefix"] / "venv"
    config = dirs["config"] / "agent.toml"
    doc = tomllib.loads(config.read_text())
    assert doc["model"]["path"] == f"{dirs['state']}/model" and doc["state_dir"] == str(dirs["state"])
    assert (dirs["state"] / "model" / "edgekit.json").is_file()
    assert doc["security"]["trusted_keys"] == [f"{dirs['config']}/keys/00-release.pub"]
    assert (dirs["config"] / "keys" / "00-release.pub").read_bytes() == key.read_bytes()
    unit = (dirs["unit"] / "edgekit-agent.service").read_text()
    assert f"ExecStart={venv}/bin/edgekit-agent run --config {config}" in unit
    for line in ("Restart=always", "User=edgekit", "ProtectSystem=strict", f"ReadWritePaths={dirs['state']}", "NoNewPrivileges=yes"):
        assert line in unit
    assert "@" not in unit  # every placeholder was filled in
    # the venv has the agent and only its dependencies: no onnx, torch or tensorflow
    probe = subprocess.run([str(venv / "bin/python"), "-c", "import importlib.util as u; print([m for m in ('onnx', 'torch', 'tensorflow', 'pydantic') if u.find_spec(m)])"],
                           capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "[]", probe.stderr

    # the installed agent starts, answers a prediction and publishes telemetry
    telemetry = mqtt_collector(mosquitto, ["edgekit/v1/pi-07/telemetry"])
    proc = subprocess.Popen([str(venv / "bin/edgekit-agent"), "run", "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def ready():
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200
            except OSError:
                return proc.poll() is not None

        wait_until(ready, 30, what="the installed agent to be ready")
        assert proc.poll() is None
        x = np.load(digits["eval"])["x"][:1]
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/predict", data=json.dumps({"inputs": {"x": x.tolist()}}).encode(),
                                     headers={"Content-Type": "application/json"})
        body = json.loads(urllib.request.urlopen(req, timeout=10).read())
        assert body["top_k"][0][0]["index"] == int(np.argmax(body["outputs"]["logits"][0]))
        telemetry.wait_for(lambda c: any(p["requests"] >= 1 for p in c.payloads("telemetry")), 20, "telemetry from the installed agent")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    assert proc.returncode == 0

    # re-running upgrades in place and keeps the device's config and model
    config.write_text(config.read_text().replace("top_k = 5", "top_k = 3"))
    res = subprocess.run(cmd + ["--no-check"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "top_k = 3" in config.read_text() and (dirs["config"] / "agent.toml.new").is_file()
    assert "kept the model" in res.stdout


def test_install_script_refuses_to_run_outside_a_bundle(tmp_path):
    script = tmp_path / "install.sh"
    script.write_text((ROOT / "device_agent/deploy/install.sh").read_text())
    r = subprocess.run(["bash", str(script), "--no-user"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "no agent.toml next to install.sh" in r.stderr
    r = subprocess.run(["bash", str(script), "--bogus"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "unknown option '--bogus'" in r.stderr
