"""`edgekit agent bundle`, its lock, and deploy/install.sh: the Pi install path, in temporary directories."""

import hashlib
import json
import shutil
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
#: this machine as a target: a Debian bookworm x86_64 (glibc 2.36) with this Python
HOST = ["--platform", "manylinux_2_36_x86_64", "--python-version", f"{sys.version_info[0]}.{sys.version_info[1]}"]


@pytest.fixture(scope="session")
def agent_wheel(tmp_path_factory) -> Path:
    from device_agent.bundle import find_wheel

    return find_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="session")
def host_bundle(tmp_path_factory, digits_dir, agent_wheel) -> Path:
    """A --with-deps bundle for this machine, from the lock shipped for it (pip downloads the locked wheels once)."""
    out = tmp_path_factory.mktemp("host-bundle") / "pi-07.tar.gz"
    r = CliRunner().invoke(cli, ["agent", "bundle", "--device-id", "pi-07", "--model", str(digits_dir), "--wheel", str(agent_wheel),
                                 "-o", str(out), "--with-deps", *HOST, "--set", "api.port=8471"])
    if r.exit_code != 0 and "failed:" in r.output:
        pytest.skip(f"cannot download the agent's locked wheels (no package index?): {r.output.strip()}")
    assert r.exit_code == 0, r.output
    return out


def unpack(archive: Path, dest: Path) -> Path:
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest


def install_cmd(bundle_dir: Path, root: Path, *extra: str) -> list[str]:
    return ["bash", str(bundle_dir / "install.sh"), "--prefix", str(root / "opt/edgekit-agent"), "--config-dir", str(root / "etc/edgekit"),
            "--state-dir", str(root / "var/lib/edgekit"), "--unit-dir", str(root / "etc/systemd/system"), "--python", sys.executable,
            "--offline", "--no-user", "--no-systemd", *extra]


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
    assert {"install.sh", "edgekit-agent.service", "agent.toml", "requirements.txt", "requirements.lock", "BUNDLE.json", "SHA256SUMS",
            "model/edgekit.json", "certs/ca.pem", "certs/client.pem", "certs/client.key", "secrets/broker-password", "keys/00-release.pub",
            f"wheels/{agent_wheel.name}"} <= names
    assert any(n.endswith(".ort") for n in names) and any(n.endswith(".onnx") for n in names)
    assert members["install.sh"].mode == 0o755 and members["certs/client.key"].mode == 0o600 and members["secrets/broker-password"].mode == 0o600
    assert out.stat().st_mode & 0o777 == 0o600  # it holds the password and the key, whatever their files' modes were
    with tarfile.open(out) as tar:
        sums = dict(reversed(line.split("  ", 1)) for line in tar.extractfile("SHA256SUMS").read().decode().splitlines())
        assert sums.keys() == names - {"SHA256SUMS"}
        assert all(hashlib.sha256(tar.extractfile(n).read()).hexdigest() == h for n, h in sums.items())
        lock = tar.extractfile("requirements.lock").read().decode()
    # by default the lock shipped for the target (a Pi: manylinux_2_36_aarch64, Python 3.11), as is
    assert lock == (ROOT / "device_agent/deploy/locks/cp311-manylinux_2_36_aarch64.txt").read_text()
    assert summary["lock"]["source"] == "shipped:cp311-manylinux_2_36_aarch64.txt" and "onnxruntime" in summary["lock"]["packages"]
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
def test_install_script_makes_a_working_agent(tmp_path, digits_dir, digits, agent_wheel, mosquitto, mqtt_collector):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = tmp_path / "release.pub"
    key.write_bytes(ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(serialization.Encoding.PEM,
                                                                                 serialization.PublicFormat.SubjectPublicKeyInfo))
    port = free_port()
    r, out = bundle(tmp_path, digits_dir, agent_wheel, "--broker", mosquitto.url, "--set", f"api.port={port}", "--trusted-key", str(key),
                    "--set", "telemetry.interval_s=0.5", "--set", "broker.reconnect_min_s=0.1", "--with-deps", *HOST)
    if r.exit_code != 0 and "failed:" in r.output:
        pytest.skip(f"cannot download the agent's locked wheels (no package index?): {r.output.strip()}")
    assert r.exit_code == 0, r.output
    b = unpack(out, tmp_path / "bundle")
    root = tmp_path / "root"
    dirs = {"prefix": root / "opt/edgekit-agent", "config": root / "etc/edgekit", "state": root / "var/lib/edgekit", "unit": root / "etc/systemd/system"}
    cmd = install_cmd(b, root)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "self-test: passed" in res.stdout and "runtime: match" in res.stdout
    venv = dirs["prefix"] / "venv"
    config = dirs["config"] / "agent.toml"
    doc = tomllib.loads(config.read_text())
    assert doc["model"]["path"] == f"{dirs['state']}/model" and doc["state_dir"] == str(dirs["state"])
    assert (dirs["state"] / "model" / "edgekit.json").is_file()
    assert doc["security"]["trusted_keys"] == [f"{dirs['config']}/keys/00-release.pub"]
    assert (dirs["config"] / "keys" / "00-release.pub").read_bytes() == key.read_bytes()
    unit = (dirs["unit"] / "edgekit-agent.service").read_text()
    assert f"ExecStart={venv}/bin/edgekit-agent run --config {config}" in unit
    for line in ("Restart=always", "User=edgekit", "ProtectSystem=strict", f"ReadWritePaths={dirs['state']}", "NoNewPrivileges=yes",
                 "MemoryMax=512M", "TasksMax=128"):
        assert line in unit.splitlines()
    assert "@" not in unit  # every placeholder was filled in
    # the venv has exactly the lock's versions (and the agent): no onnx, torch or tensorflow
    from device_agent.bundle import Lock

    lock = Lock.parse((b / "requirements.lock").read_text(), source="requirements.lock")
    probe = subprocess.run([str(venv / "bin/python"), "-c", "import json, importlib.metadata as m; "
                            "print(json.dumps({d.metadata['Name'].lower().replace('_', '-'): d.version for d in m.distributions()}))"],
                           capture_output=True, text=True, timeout=60)
    installed = json.loads(probe.stdout)
    assert {k: v for k, v in installed.items() if k not in ("pip", "setuptools", "edgekit")} == lock.pins, probe.stderr
    assert (dirs["prefix"] / "requirements.lock").read_text() == (b / "requirements.lock").read_text()

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

    # re-running upgrades in place and keeps the device's config and model; the unit takes other ceilings
    config.write_text(config.read_text().replace("top_k = 5", "top_k = 3"))
    res = subprocess.run(cmd + ["--no-check", "--memory-max", "1G", "--tasks-max", "64"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "top_k = 3" in config.read_text() and (dirs["config"] / "agent.toml.new").is_file()
    assert "kept the model" in res.stdout
    unit = (dirs["unit"] / "edgekit-agent.service").read_text().splitlines()
    assert "MemoryMax=1G" in unit and "TasksMax=64" in unit


def test_install_script_refuses_to_run_outside_a_bundle(tmp_path):
    script = tmp_path / "install.sh"
    script.write_text((ROOT / "device_agent/deploy/install.sh").read_text())
    r = subprocess.run(["bash", str(script), "--no-user"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "no agent.toml next to install.sh" in r.stderr
    r = subprocess.run(["bash", str(script), "--bogus"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "unknown option '--bogus'" in r.stderr


def test_bundle_is_written_private_through_no_predictable_name(tmp_path, digits_dir, agent_wheel):
    victim = tmp_path / "victim"
    victim.write_text("not yours\n")
    out = tmp_path / "pi-07.tar.gz"
    (tmp_path / "pi-07.tar.gz.tmp").symlink_to(victim)  # the old predictable temporary name, planted
    r, _ = bundle(tmp_path, digits_dir, agent_wheel)
    assert r.exit_code == 0, r.output
    assert victim.read_text() == "not yours\n" and (tmp_path / "pi-07.tar.gz.tmp").is_symlink()
    assert out.is_file() and not out.is_symlink() and out.stat().st_mode & 0o777 == 0o600
    # a symlink at the output itself is replaced, not followed
    out.unlink()
    out.symlink_to(victim)
    r, _ = bundle(tmp_path, digits_dir, agent_wheel)
    assert r.exit_code == 0, r.output
    assert victim.read_text() == "not yours\n" and not out.is_symlink() and tarfile.is_tarfile(out)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary file left behind


def test_archive_writer_leaves_nothing_when_it_fails(tmp_path):
    from device_agent.bundle.archive import write_private_tar

    out = tmp_path / "b.tar.gz"
    out.write_bytes(b"the previous bundle")
    with pytest.raises(FileNotFoundError):
        write_private_tar(out, {"a": (b"x", 0o644), "b": (tmp_path / "missing", 0o644)}, mtime=0)
    assert out.read_bytes() == b"the previous bundle" and [p.name for p in tmp_path.iterdir()] == ["b.tar.gz"]


@pytest.mark.slow
def test_a_recorded_lock_makes_bundles_install_the_same_wheels(tmp_path, digits_dir, agent_wheel, monkeypatch):
    lock = tmp_path / "agent.lock"
    first, out1 = bundle(tmp_path / "monday", digits_dir, agent_wheel, "--lock", str(lock), *HOST)
    if first.exit_code != 0 and "failed:" in first.output:
        pytest.skip(f"cannot resolve the agent's dependencies (no package index?): {first.output.strip()}")
    assert first.exit_code == 0, first.output
    assert json.loads(first.output)["lock"]["source"] == f"resolved, recorded in {lock}"
    recorded = lock.read_text()
    # "a day later" nothing is resolved again: with no package index at all the same lock goes into the bundle
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "nothing"))
    second, out2 = bundle(tmp_path / "tuesday", digits_dir, agent_wheel, "--lock", str(lock), *HOST)
    assert second.exit_code == 0, second.output
    assert json.loads(second.output)["lock"]["source"] == str(lock) and lock.read_text() == recorded
    with tarfile.open(out1) as a, tarfile.open(out2) as b:
        assert a.extractfile("requirements.lock").read() == b.extractfile("requirements.lock").read() == recorded.encode()
    from device_agent.bundle import Lock

    parsed = Lock.parse(recorded, source="agent.lock")
    assert parsed.text() == recorded and "onnxruntime" in parsed.pins  # the format round-trips: sorted, no date
    # `edgekit agent lock` is the same resolution, written on its own
    monkeypatch.delenv("PIP_NO_INDEX")
    monkeypatch.delenv("PIP_FIND_LINKS")
    r = CliRunner().invoke(cli, ["agent", "lock", "-o", str(tmp_path / "again.lock"), *HOST, "--json"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "again.lock").read_text() == recorded and json.loads(r.output)["packages"] == parsed.pins


def write_lock(path, *, platform="manylinux_2_36_aarch64", python="3.11", pins=None):
    from device_agent.bundle import Lock
    from device_agent.bundle.lock import LockEntry

    pins = pins or {"numpy": "2.4.6", "onnxruntime": "1.32.0", "paho-mqtt": "2.2.0", "cryptography": "51.0.1", "orjson": "3.13.0",
            "pysimdjson": "7.0.2"}
    entries = tuple(LockEntry(n, v, f"{n.replace('-', '_')}-{v}-py3-none-any.whl", "0" * 64) for n, v in pins.items())
    path.write_text(Lock(platform, python, ("numpy>=1.24",), entries).text())
    return path


@pytest.mark.parametrize(
    "lock_args, constraint, message",
    [
        ({"platform": "manylinux_2_36_x86_64"}, None, "was made for manylinux_2_36_x86_64 / Python 3.11, not manylinux_2_36_aarch64 / Python 3.11"),
        ({"pins": {"numpy": "2.4.6"}}, None, "has no onnxruntime, but the agent requires onnxruntime>=1.17: delete the lock to resolve it again"),
        ({"pins": {"numpy": "1.20.0"}}, None, "pins numpy 1.20.0, but the agent requires numpy>=1.24"),
        ({}, "onnxruntime==1.27.0\n", "pins onnxruntime 1.32.0, but --constraint asks for onnxruntime==1.27.0"),
    ],
)
def test_a_lock_that_does_not_fit_is_refused_in_one_line(tmp_path, digits_dir, agent_wheel, lock_args, constraint, message):
    lock = write_lock(tmp_path / "agent.lock", **lock_args)
    args = ["--lock", str(lock)]
    if constraint:
        (tmp_path / "c.txt").write_text(constraint)
        args += ["--constraint", str(tmp_path / "c.txt")]
    r, out = bundle(tmp_path, digits_dir, agent_wheel, *args)
    assert r.exit_code == 1 and message in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not out.exists()


def test_a_malformed_lock_names_the_line(tmp_path, digits_dir, agent_wheel):
    lock = write_lock(tmp_path / "agent.lock")
    n = len(lock.read_text().splitlines()) + 1
    lock.write_text(lock.read_text() + "onnxruntime>=1.17\n")
    r, _ = bundle(tmp_path, digits_dir, agent_wheel, "--lock", str(lock))
    assert r.exit_code == 1 and f"--lock {lock}:{n}: 'onnxruntime>=1.17' is not 'NAME==VERSION --hash=sha256:HEX  # FILE.whl'" in r.output


def test_shipped_locks_pin_the_agent_extra_for_each_target():
    from packaging.requirements import Requirement

    from device_agent.bundle import Lock, lock_name
    from device_agent.bundle.lock import FALLBACK_REQUIREMENTS

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["agent"]
    assert sorted(FALLBACK_REQUIREMENTS) == sorted(extra)  # what a bundle asks for when edgekit's metadata is not installed
    locks = sorted((ROOT / "device_agent/deploy/locks").glob("*.txt"))
    assert {p.name for p in locks} >= {"cp311-manylinux_2_36_aarch64.txt", "cp311-manylinux_2_36_x86_64.txt"}
    for p in locks:
        lock = Lock.parse(p.read_text(), source=p.name)
        assert p.name == lock_name(lock.platform, lock.python_version) and lock.text() == p.read_text()
        lock.check(extra, [], platform=lock.platform, python_version=lock.python_version, source=p.name)
        assert sorted(Requirement(r).name for r in lock.requires) == sorted(Requirement(r).name for r in extra)


@pytest.mark.parametrize("args, message", [(["--platform", "Pi 4"], "'Pi 4' is not a wheel platform tag"),
                                           (["--constraint", "nope.txt"], "does not exist")])
def test_lock_command_refuses_bad_usage(tmp_path, args, message):
    r = CliRunner().invoke(cli, ["agent", "lock", "-o", str(tmp_path / "x.lock"), *args])
    assert r.exit_code == 2 and message in r.output and not (tmp_path / "x.lock").exists()


def test_target_platforms_take_every_wheel_the_device_glibc_runs():
    from device_agent.bundle import target_platforms

    pi = target_platforms("manylinux_2_36_aarch64")
    assert pi[0] == "manylinux_2_36_aarch64" and pi[-2:] == ["manylinux_2_17_aarch64", "manylinux2014_aarch64"] and len(pi) == 21
    assert target_platforms("manylinux2014_aarch64") == ["manylinux_2_17_aarch64", "manylinux2014_aarch64"]
    x86 = target_platforms("manylinux_2_28_x86_64")
    assert {"manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "manylinux_2_5_x86_64"} <= set(x86)
    assert target_platforms("linux_armv7l") == ["linux_armv7l"]


def test_bundle_records_the_constraint_it_was_resolved_under(tmp_path, digits_dir, agent_wheel):
    (tmp_path / "c.txt").write_text("# the emulator runs no newer onnxruntime\nonnxruntime==1.32.0\n")
    lock = write_lock(tmp_path / "agent.lock")
    r, out = bundle(tmp_path, digits_dir, agent_wheel, "--lock", str(lock), "--constraint", str(tmp_path / "c.txt"))
    assert r.exit_code == 0, r.output
    with tarfile.open(out) as tar:
        assert tar.extractfile("constraints.txt").read() == (tmp_path / "c.txt").read_bytes()
        assert json.loads(tar.extractfile("BUNDLE.json").read())["lock"]["source"] == str(lock)


def run_install(bundle_dir, root, *extra):
    return subprocess.run(install_cmd(bundle_dir, root, "--no-check", *extra), capture_output=True, text=True, timeout=600)


def rewrite_sums(bundle_dir, name):
    sums = bundle_dir / "SHA256SUMS"
    lines = [f"{hashlib.sha256((bundle_dir / name).read_bytes()).hexdigest()}  {name}" if line.endswith(f"  {name}") else line
             for line in sums.read_text().splitlines()]
    sums.write_text("\n".join(lines) + "\n")


@pytest.mark.slow
def test_a_tampered_wheel_stops_install_with_one_line_naming_it(tmp_path, host_bundle):
    b = unpack(host_bundle, tmp_path / "bundle")
    wheel = next((b / "wheels").glob("numpy-*.whl"))
    with open(wheel, "ab") as f:
        f.write(b"\0")
    res = run_install(b, tmp_path / "root")
    assert res.returncode == 1 and res.stderr.splitlines() == [
        f"install.sh: error: wheels/{wheel.name} does not match its sha256 in SHA256SUMS: the bundle was modified or damaged; "
        "make it again with 'edgekit agent bundle'"]
    assert not (tmp_path / "root" / "opt").exists()  # stopped before anything was installed
    # SHA256SUMS rewritten to match: the lock's hashes (pip --require-hashes) still stop it, in one line
    rewrite_sums(b, f"wheels/{wheel.name}")
    res = run_install(b, tmp_path / "root")
    assert res.returncode == 1 and len(res.stderr.splitlines()) == 1, res.stderr
    version = wheel.name.split("-")[1]
    assert res.stderr.startswith(f"install.sh: error: numpy=={version} ({wheel.name}) does not match its sha256 in requirements.lock")
    Path(res.stderr.split("pip's output: ")[1].rstrip(")\n")).unlink()  # the log it kept for a look


def test_a_wheel_not_in_the_bundle_is_refused(tmp_path, digits_dir, agent_wheel):
    r, out = bundle(tmp_path, digits_dir, agent_wheel)
    assert r.exit_code == 0, r.output
    b = unpack(out, tmp_path / "bundle")
    shutil.copy(agent_wheel, b / "wheels" / "edgekit-9.9.9-py3-none-any.whl")  # planted: a "newer" agent
    res = run_install(b, tmp_path / "root")
    assert res.returncode == 1 and res.stderr.strip() == (
        "install.sh: error: wheels/edgekit-9.9.9-py3-none-any.whl is not part of the bundle (SHA256SUMS does not list it): remove it")


@pytest.mark.parametrize("option, value, message", [("--memory-max", "lots", "--memory-max 'lots' is not a size"),
                                                    ("--tasks-max", "12x", "--tasks-max '12x' is not a count")])
def test_bad_resource_ceilings_are_one_line(tmp_path, digits_dir, agent_wheel, option, value, message):
    r, out = bundle(tmp_path, digits_dir, agent_wheel)
    b = unpack(out, tmp_path / "bundle")
    res = run_install(b, tmp_path / "root", option, value)
    assert res.returncode == 1 and len(res.stderr.splitlines()) == 1 and message in res.stderr, res.stderr


def test_install_with_images_adds_pillow_and_simplejpeg_from_the_index_and_refuses_offline(tmp_path, host_bundle):
    b = unpack(host_bundle, tmp_path / "bundle")
    res = subprocess.run(install_cmd(b, tmp_path / "off", "--no-check", "--with-images"), capture_output=True, text=True, timeout=600)
    assert res.returncode == 1 and res.stderr.splitlines() == [
        "install.sh: error: --with-images installs Pillow from the package index, which --offline forbids: drop one of them "
        f"(or later: {tmp_path / 'off/opt/edgekit-agent'}/venv/bin/pip install Pillow)"]
    online = [a for a in install_cmd(b, tmp_path / "root", "--no-check", "--with-images") if a != "--offline"]
    res = subprocess.run(online, capture_output=True, text=True, timeout=900)
    if res.returncode != 0 and "pip failed" in res.stderr and "Pillow" in res.stdout:
        pytest.skip(f"no package index to install Pillow from: {res.stderr.strip()}")
    assert res.returncode == 0, res.stderr
    assert "installing Pillow and simplejpeg (--with-images: JPEG and PNG request bodies)" in res.stdout
    python = tmp_path / "root/opt/edgekit-agent/venv/bin/python"
    check = subprocess.run([str(python), "-c", "import PIL, simplejpeg, torch"], capture_output=True, text=True, timeout=120)
    assert "No module named 'torch'" in check.stderr  # Pillow and simplejpeg came, nothing heavy with them
