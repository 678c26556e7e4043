"""A private key others can read is refused wherever edgekit or the agent reads one, with the fix (`chmod 600 KEY`)."""

from __future__ import annotations

import os
import shutil

import pytest
from click.testing import CliRunner

from device_agent.config import parse_config
from device_agent.contract.errors import ConfigError
from edgekit.cli.main import cli
from edgekit.errors import InputError
from edgekit.signing import generate_keys, load_private_key


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture
def key(tmp_path):
    old = os.umask(0o000)  # the widest umask: the key must still be private
    try:
        kp = generate_keys(tmp_path / "keys")
    finally:
        os.umask(old)
    assert kp.private.stat().st_mode & 0o777 == 0o600
    return kp


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o666])
def test_sign_refuses_a_key_group_or_others_can_access(key, releases, tmp_path, mode):
    out = tmp_path / "out"
    shutil.copytree(releases["unsigned"], out)
    key.private.chmod(mode)
    r = run("sign", out, "--key", key.private)
    assert r.exit_code == 1
    assert r.output.strip() == (f"error: private key {key.private} is accessible by others (mode {mode:04o}); a key others can read may "
                                f"already be copied. Restrict it: chmod 600 {key.private}")
    assert not (out / "edgekit.json.sig").exists()
    key.private.chmod(0o600)
    assert run("sign", out, "--key", key.private).exit_code == 0


def test_every_command_that_reads_the_signing_key_refuses_a_loose_one(key, tmp_path):
    key.private.chmod(0o644)
    with pytest.raises(InputError, match="chmod 600"):
        load_private_key(key.private)
    common = ["--broker", "mqtt://127.0.0.1:1", "--state-dir", tmp_path / "f", "--key", key.private]
    for args in (["fleet", "rollback", "--device", "pi-07", *common], ["fleet", "cancel", "j1", "--device", "pi-07", *common]):
        r = run(*args)
        assert r.exit_code == 1 and "chmod 600" in r.output and "cannot reach the broker" not in r.output, r.output


def test_the_fleets_tls_client_key_is_checked_too(tls_files, tmp_path):
    loose = tmp_path / "client.key"
    shutil.copy(tls_files["client_key"], loose)
    loose.chmod(0o644)
    r = run("fleet", "status", "--broker", "mqtts://127.0.0.1:1", "--ca-file", tls_files["ca"], "--cert-file", tls_files["client_cert"],
            "--client-key", loose, "--state-dir", tmp_path / "f")
    assert r.exit_code == 1 and f"--client-key: private key {loose} is accessible by others (mode 0644)" in r.output


def test_the_agents_tls_key_may_be_group_readable_never_world_readable(tls_files, releases, tmp_path):
    key = tmp_path / "client.key"
    shutil.copy(tls_files["client_key"], key)

    def config():
        return parse_config({"device": {"id": "pi-07"}, "model": {"path": str(releases["v1"])},
                             "broker": {"url": "mqtts://b:8883", "ca_file": str(tls_files["ca"]), "cert_file": str(tls_files["client_cert"]),
                                        "key_file": str(key)}}, base_dir=tmp_path)

    key.chmod(0o640)  # the installer's layout: root owns it, the agent's group reads it
    assert config().broker.key_file == key
    key.chmod(0o644)
    with pytest.raises(ConfigError, match=r"\[broker\] key_file: private key .* is accessible by others \(mode 0644\).*chmod 640") as e:
        config()
    assert e.value.field == "broker.key_file"
