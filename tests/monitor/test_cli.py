"""fleet drift / fleet watch: usage errors, --db output, durations (no broker needed)."""

import json

import pytest
from click.testing import CliRunner

from device_agent.contract.manifest import load_manifest
from edgekit.cli.fleet_options import parse_duration
from edgekit.cli.main import cli
from edgekit.monitor import Monitor, SqliteStore
from tests.monitor.conftest import STDS, reference_inputs


def run(*args):
    return CliRunner().invoke(cli, ["fleet", *map(str, args)])


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("1h", 3600), ("2d", 172800), ("1.5h", 5400)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("args", "words"), [
    (["--db", "x.sqlite", "--group", "g", "--device", "d"], "--group and --device exclude each other"),
    (["--group", "g"], "give --broker (ask the running collectors) or --db"),
    (["--db", "x.sqlite", "--window", "soon"], "'soon' is not a duration; use a positive number with s, m, h or d"),
    (["--db", "x.sqlite", "--min-samples", "0"], "0 is not in the range x>=1"),
])
def test_drift_usage_errors_exit_2(args, words):
    r = run("drift", *args)
    assert r.exit_code == 2 and words in r.output


def test_drift_errors_are_one_clean_line(tmp_path):
    r = run("drift", "--db", tmp_path / "missing.sqlite")
    assert r.exit_code == 1 and r.output == f"error: no fleet database at {tmp_path / 'missing.sqlite'}; `edgekit fleet watch --db " \
                                            f"{tmp_path / 'missing.sqlite'}` creates it\n"
    (tmp_path / "f.sqlite").touch()
    r = run("drift", "--db", tmp_path / "f.sqlite", "--psi-warn", "0.5")
    assert r.exit_code == 1 and "psi_warn 0.5 is above psi_alert 0.25" in r.output


def test_drift_from_a_database(tmp_path, model_dir, make_device, rng):
    db = tmp_path / "fleet.sqlite"
    with SqliteStore(db) as store:
        m = Monitor(store)
        m.register(load_manifest(model_dir))
        dev, quiet = make_device(model_dir, device="pi-07"), make_device(model_dir, device="pi-08")
        for d in (dev, quiet):
            m.handle(*d.state())
        x = reference_inputs(700, rng)
        x[:, 7] -= 2 * STDS[7]
        for t, p in dev.window(x) + quiet.window(reference_inputs(50, rng)):
            m.handle(t, p)
    r = run("drift", "--db", db, "--group", "cameras")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].startswith("group cameras  mlp 1.0.0  alert  (750 samples in 2 window(s)")
    moved = [line.split() for line in lines if line.strip().startswith("x[")]
    assert [m[:3] for m in moved] == [["x[7]", "alert", "PSI"]] * 2  # the group, then pi-07; nothing else moved
    assert -2.15 < float(moved[1][moved[1].index("mean") + 1]) < -1.85
    assert "    not enough data for 8 feature(s): 50 samples < " in r.output
    assert "device pi-08  mlp 1.0.0  not enough data  (50 samples in 1 window(s)" in r.output
    r = run("drift", "--db", db, "--device", "pi-07", "--json")
    doc = json.loads(r.output)
    (rep,) = doc["reports"]
    assert rep["level"] == "alert" and rep["moved"] == ["x[7]"] and len(rep["features"]) == 8
    r = run("drift", "--db", db, "--device", "pi-07", "--window", "1s")
    assert r.exit_code == 0  # the windows ended within the last second, or there is no telemetry: never an error
    r = run("drift", "--db", db, "--device", "nobody")
    assert r.output == "no telemetry in the last 1h\n"
    assert run("drift", "--db", db, "--device", "pi-07", "--fail-on", "alert").exit_code == 3
    assert run("drift", "--db", db, "--device", "pi-08", "--fail-on", "warn").exit_code == 0


def test_watch_needs_a_reachable_broker(tmp_path):
    r = CliRunner().invoke(cli, ["fleet", "watch", "--broker", "ftp://x", "--db", str(tmp_path / "w.sqlite")])
    assert r.exit_code == 1 and r.output.startswith("error: broker URL 'ftp://x' has scheme 'ftp'; allowed: mqtt, mqtts")


def test_unreachable_broker_is_one_clean_line(tmp_path):
    from tests.conftest import free_port

    port = free_port()
    for cmd in (["watch", "--db", str(tmp_path / "w.sqlite")], ["drift"]):
        r = run(*cmd, "--broker", f"mqtt://127.0.0.1:{port}")
        assert r.exit_code == 1 and r.output.startswith(f"error: cannot reach the broker at 127.0.0.1:{port}"), r.output


@pytest.mark.parametrize("args", [[], ["--broker", "mqtt://127.0.0.1:1", "--db", "x.sqlite"]])
def test_status_needs_a_broker_or_a_store_exactly(args, tmp_path):
    r = run("status", "--state-dir", tmp_path, *args)
    assert r.exit_code == 2 and "give --broker (ask the collectors, or read the broker) or --db (read a collector's store), exactly one" in r.output


def test_status_and_drift_read_a_postgresql_store(postgres, tmp_path, model_dir, make_device, rng):
    from edgekit.monitor.store import open_store

    store = open_store(postgres)
    try:
        m = Monitor(store)
        m.register(load_manifest(model_dir))
        dev = make_device(model_dir, device="pi-07")
        for t, p in [dev.state(), *dev.window(reference_inputs(700, rng))]:
            m.handle(t, p)
    finally:
        store.close()
    r = run("status", "--db", postgres, "--state-dir", tmp_path, "--json")
    assert r.exit_code == 0, r.output
    (row,) = json.loads(r.output)
    assert row["device"] == "pi-07" and row["online"] and row["requests"] == 14 and row["drift_level"] == "ok"
    r = run("drift", "--db", postgres, "--device", "pi-07", "--json")
    assert r.exit_code == 0 and json.loads(r.output)["reports"][0]["samples"] == 700
    r = run("drift", "--db", "postgresql://nobody@127.0.0.1:1/none")
    assert r.exit_code == 1 and r.output.startswith("error: cannot use the fleet database postgresql://nobody@127.0.0.1:1/none:")
