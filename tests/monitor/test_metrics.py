"""/metrics (issue 15): read from the store when scraped, valid for promtool, scraped by a real Prometheus from a live collector."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from device_agent.contract.manifest import load_manifest
from edgekit.monitor import Monitor
from edgekit.monitor.collector import Collector
from edgekit.monitor.metrics import NAMES, FleetMetrics, serve_metrics
from edgekit.monitor.store import DeviceQuery, open_store
from tests.conftest import wait_until
from tests.monitor.conftest import STDS, reference_inputs
from tests.monitor.test_collector import Publisher
from tests.services import need

PROMTOOL = shutil.which("promtool")


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        return str(r.read().decode())


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def promtool_check(text: str) -> subprocess.CompletedProcess:
    need(PROMTOOL, "promtool is not installed", "run 'make test-debs' (Debian package prometheus)")
    return subprocess.run([str(PROMTOOL), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)


@pytest.fixture
def fleet_db(tmp_path, model_dir, make_device, rng):
    """A store with three real agents of group cameras (one drifted), group verdicts, a rollout and alerts."""
    store = open_store(tmp_path / "fleet.sqlite")
    m = Monitor(store)
    m.register(load_manifest(model_dir))
    devices = [make_device(model_dir, device=f"cam-{i}") for i in range(3)]
    for d in devices:
        m.handle(*d.state())
    for d in devices:
        x = reference_inputs(600, rng)
        if d.id == "cam-1":
            x[:, 3] += 2 * STDS[3]
        for t, p in d.window(x):
            m.handle(t, p)
    m.evaluate_groups(force=True)
    store.record_rollout({"v": 1, "type": "rollout", "job": "deploy-7", "model": {"name": "mlp", "version": "1.1.0"}, "status": "running",
                          "wave": 1, "ts": time.time(), "outcomes": {"cam-0": {"state": "SUCCEEDED", "wave": 0},
                                                                     "cam-1": {"state": "FAILED", "wave": 0}}})
    yield store, m
    store.close()


def test_a_scrape_passes_promtool_and_matches_the_store(fleet_db):
    store, m = fleet_db
    server = serve_metrics(FleetMetrics(store, collector="watch-t", stats=lambda: dict(m.stats)), port=0)
    try:
        assert server.host == "127.0.0.1"  # never every interface unless asked
        text = scrape(server.url)
    finally:
        server.close()
    r = promtool_check(text)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r.stdout + r.stderr
    got = samples(text)
    assert got["edgekit_devices"] == [({"group": "cameras", "model": "mlp", "version": "1.0.0", "status": "online"}, 3.0)]
    (runtime_labels, n), = got["edgekit_devices_by_runtime"]
    (row, *_) = store.device_page(DeviceQuery()).rows
    assert n == 3 and runtime_labels["runtime"] == row.runtime and runtime_labels["runtime"].startswith("onnxruntime ")
    psi = {s[0]["feature"]: s[1] for s in got["edgekit_drift_psi"]}
    stored = {v.feature: v.psi for v in store.verdicts("group") if v.psi is not None}
    assert psi == pytest.approx(stored) and max(psi, key=psi.get) == "x[3]"
    assert {s[0]["feature"]: s[1] for s in got["edgekit_drift_level"]}["x[3]"] >= 1.0  # warn or alert for the group
    requests = sum(h.requests for h in store.hours(scope="group", since=0))
    assert got["edgekit_requests"] == [({"group": "cameras", "model": "mlp", "version": "1.0.0"}, requests)] and requests == 36  # 12 each
    assert got["edgekit_latency_p95_seconds"][0][1] > 0
    assert ({"job": "deploy-7", "model": "mlp", "version": "1.1.0", "status": "running"}, 1.0) in got["edgekit_rollout_status"]
    assert ({"job": "deploy-7", "wave": "0", "state": "FAILED"}, 1.0) in got["edgekit_rollout_devices"]
    assert sum(v for lab, v in got["edgekit_alerts_last_hour"] if lab["scope"] == "device") >= 1  # cam-1 drifted
    assert ({"collector": "watch-t", "kind": "telemetry", "outcome": "stored"}, 3.0) in got["edgekit_messages_total"]
    exposed = {f.name for f in text_string_to_metric_families(text)}
    assert exposed == set(NAMES)  # every family, even when empty
    labels = {v for series in got.values() for lab, _ in series for v in lab.values()}
    assert not labels & {"cam-0", "cam-1", "cam-2"}  # bounded: devices are counted, never labelled


def test_a_real_prometheus_scrapes_a_live_collector_fed_over_mosquitto(mosquitto, prometheus, model_dir, make_device, rng, tmp_path):
    c = Collector(mosquitto.url, tmp_path / "fleet.sqlite", collector_id="watch-p")
    c.register(model_dir)
    c.start()
    pub = Publisher(mosquitto)
    try:
        assert c.wait_ready(10)
        served = c.serve_metrics(0)
        devices = [make_device(model_dir, device=f"cam-{i}") for i in range(3)]
        pub.publish([d.state() for d in devices], retain=True)
        windows = [w for d in devices for w in d.window(reference_inputs(300, rng))]
        pub.publish(windows)
        wait_until(lambda: c.monitor.stats["telemetry"] == 3 and len(c.store.devices()) == 3, 15, what="the windows stored")
        prom = prometheus([f"127.0.0.1:{served.port}"])
        online = wait_until(lambda: prom.query('edgekit_devices{group="cameras",status="online"}'), 30,
                            interval=0.5, what="Prometheus to scrape the collector")
        assert len(online) == 1 and float(online[0]["value"][1]) == 3 == len(c.store.device_page(DeviceQuery(online=True)).rows)
        (stored,) = prom.query('edgekit_messages_total{collector="watch-p",kind="telemetry",outcome="stored"}')
        assert float(stored["value"][1]) == c.monitor.stats["telemetry"] == 3
        (row, *_) = c.store.device_page(DeviceQuery()).rows
        by_runtime = prom.query(f'edgekit_devices_by_runtime{{runtime="{row.runtime}"}}')
        assert [float(s["value"][1]) for s in by_runtime] == [3.0]
        (up,) = prom.query('up{job="edgekit"}')
        assert up["value"][1] == "1"
        live = promtool_check(scrape(served.url))  # the live collector's own scrape, lag and counters included
        assert live.returncode == 0 and not live.stderr, live.stderr
    finally:
        pub.close()
        c.stop()


def test_fleet_watch_serves_metrics_on_the_port_asked(mosquitto, tmp_path):
    import socket
    import threading

    from click.testing import CliRunner

    from edgekit.cli.fleet_monitor import watch
    from edgekit.cli.main import cli
    from tests.conftest import free_port

    port = free_port()
    result = {}
    t = threading.Thread(target=lambda: result.update(r=CliRunner().invoke(watch, [
        "--broker", mosquitto.url, "--db", str(tmp_path / "w.sqlite"), "--duration", "3s", "--metrics-port", str(port)])))
    t.start()
    text = wait_until(lambda: _try_scrape(f"http://127.0.0.1:{port}/metrics"), 15, interval=0.1, what="/metrics served by fleet watch")
    t.join(20)
    assert result["r"].exit_code == 0 and f"metrics: http://127.0.0.1:{port}/metrics\n" in result["r"].output
    assert "# TYPE edgekit_devices gauge" in text and 'edgekit_collector_errors_total{collector="watch-' in text
    assert _try_scrape(f"http://127.0.0.1:{port}/metrics") is None  # stopped with the collector
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        r = CliRunner().invoke(cli, ["fleet", "watch", "--broker", mosquitto.url, "--db", str(tmp_path / "w.sqlite"),
                                     "--metrics-port", str(taken)])
    assert r.exit_code == 1 and r.output.startswith(f"error: cannot serve /metrics on 127.0.0.1:{taken}: ")
    assert r.output.rstrip().endswith("; choose another --metrics-port") and len(r.output.splitlines()) == 1


def _try_scrape(url: str) -> str | None:
    try:
        return scrape(url)
    except OSError:
        return None
