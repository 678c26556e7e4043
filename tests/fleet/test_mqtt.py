"""The fleet side's one MQTT adapter: one broker-URL parser, one connect/TLS/auth path for fleet and monitor."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest
from click.testing import CliRunner

from edgekit.cli.main import cli
from edgekit.errors import FleetError, InputError
from edgekit.fleet.client import FleetClient
from edgekit.fleet.mqtt import BrokerSession, check_reachable, parse_broker_url
from edgekit.monitor.query import ask_collectors
from edgekit.monitor.status import read_drift
from tests.conftest import free_port


@pytest.mark.parametrize(("url", "host", "port", "tls"), [
    ("mqtt://broker", "broker", 1883, False),
    ("mqtts://broker", "broker", 8883, True),
    ("mqtt://127.0.0.1:1884", "127.0.0.1", 1884, False),
    ("mqtts://[::1]:65535", "::1", 65535, True),
])
def test_broker_urls_default_the_port_by_scheme(url, host, port, tls):
    a = parse_broker_url(url)
    assert (a.host, a.port, a.tls, a.url, a.where) == (host, port, tls, url, f"{host}:{port}")


@pytest.mark.parametrize(("url", "words"), [
    ("ftp://broker:21", "broker URL 'ftp://broker:21' has scheme 'ftp'; allowed: mqtt, mqtts"),
    ("broker:1883", "has scheme 'broker'; allowed: mqtt, mqtts"),
    ("mqtt://:1883", "broker URL 'mqtt://:1883' has no host"),
    ("mqtt://broker:http", "broker URL 'mqtt://broker:http' has an invalid port; use 1-65535"),
    ("mqtt://broker:70000", "has an invalid port; use 1-65535"),
    ("mqtt://broker:0", "has an invalid port; use 1-65535"),
])
def test_bad_broker_urls_are_input_errors_naming_the_problem(url, words):
    with pytest.raises(InputError, match=words.replace("[", r"\[").replace("(", r"\(")):
        parse_broker_url(url)
    with pytest.raises(InputError, match="broker URL"):
        FleetClient(url)  # the fleet client and the monitor parse with the same function


def test_credentials_come_from_the_options_or_the_url():
    a = parse_broker_url("mqtts://op:pw@broker", ca_file="ca.pem", cert_file="c.pem", key_file="c.key")
    assert (a.username, a.password, a.ca_file, a.cert_file, a.key_file) == ("op", "pw", "ca.pem", "c.pem", "c.key")
    assert a.url == "mqtts://op@broker" and "pw" not in repr(a)  # messages and logs never show the password
    assert parse_broker_url("mqtt://op:pw@broker", username="other", password="secret").username == "other"
    assert parse_broker_url("mqtts://broker", cert_file="both.pem").key_file is None  # one PEM with the key inside
    with pytest.raises(InputError, match="a client key goes with its certificate: give --cert-file too"):
        parse_broker_url("mqtts://broker", key_file="c.key")


def test_an_unreachable_broker_is_one_fleet_error():
    port = free_port()
    address = parse_broker_url(f"mqtt://127.0.0.1:{port}")
    for attempt in (lambda: check_reachable(address), lambda: BrokerSession(address, "t").open(), lambda: FleetClient(address).connect(),
                    lambda: read_drift(address), lambda: ask_collectors(address)):
        with pytest.raises(FleetError, match=f"cannot reach the broker at 127.0.0.1:{port}: .*; check --broker and that the broker runs"):
            attempt()


@pytest.mark.parametrize("command", [["status"], ["jobs"], ["drift"], ["watch", "--db", "w.sqlite"]])
def test_every_fleet_command_rejects_a_bad_port_in_one_line(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["fleet", *command, "--broker", "mqtt://127.0.0.1:99999"])
    assert r.exit_code == 1
    assert r.output == "error: broker URL 'mqtt://127.0.0.1:99999' has an invalid port; use 1-65535 (mqtt://host:1883, mqtts://host:8883)\n"


@pytest.mark.slow
def test_fleet_and_monitor_share_one_tls_and_password_path(tmp_path, mosquitto_factory, tls_files):
    if not shutil.which("mosquitto_passwd"):
        pytest.skip("mosquitto_passwd is not installed")
    pw = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(pw), "operator", "s3cret"], check=True, capture_output=True, timeout=30)
    broker = mosquitto_factory(tls={**tls_files, "require_certificate": True}, password_file=pw)
    (tmp_path / "pw.txt").write_text("s3cret\n")
    (tmp_path / "bad.txt").write_text("wrong\n")
    creds = ["--username", "operator", "--ca-file", tls_files["ca"], "--cert-file", tls_files["client_cert"], "--client-key",
             tls_files["client_key"]]

    def fleet(*args, password: str = "pw.txt"):
        return CliRunner().invoke(cli, ["fleet", *map(str, args), "--broker", broker.url, *map(str, creds), "--password-file",
                                        str(tmp_path / password)])

    r = fleet("status", "--state-dir", tmp_path / "fleet", "--wait", "0.5", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == []  # connected and subscribed (the drift column's read too): no device yet
    r = fleet("drift", "--timeout", "2")
    assert r.exit_code == 1 and r.output.startswith(f"error: no fleet collector is online at {broker.url}"), r.output
    refused = f"error: the broker at 127.0.0.1:{broker.port} refused the connection: Not authorized"
    for args in (["status", "--state-dir", tmp_path / "fleet"], ["watch", "--db", tmp_path / "w.sqlite", "--duration", "30s"]):
        started = time.monotonic()
        r = fleet(*args, password="bad.txt")
        assert r.exit_code == 1 and r.output.startswith(refused), r.output
        assert time.monotonic() - started < 5  # the refusal ends the wait; no timeout runs out
