"""What benchmarks/fleet_scale.py runs against: Mosquitto with a written config, PostgreSQL, collectors, simulators, history.

- :class:`Broker`: Mosquitto on a free port with a config for a large fleet (unlimited connections,
  a deep queue per persistent session, 1,000 QoS 1 messages in flight to a collector), its file
  limit raised for 10,000+ connections;
- :class:`Database`: a throwaway PostgreSQL (tests/services.py: initdb in a temp dir, fsync off);
- :func:`start_collector`: ``edgekit fleet watch`` as a subprocess (the real command);
- :func:`start_simulators`: benchmarks/scale_sim.py processes, 2,500 devices each;
- :func:`load_history`: windows for the hour before the run, built like the simulator's, filed
  through the store's own batch ingest (what a collector does with them), before the collector starts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from scale_sim import GROUPS, Templates, device_name, group_of  # noqa: E402

from tests.conftest import free_port  # noqa: E402

PER_PROCESS = 2500
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Broker:
    """Mosquitto for the benchmark (see the module docs)."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Broker:
        conf = self.dir / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "max_connections -1",
                 # collectors keep persistent sessions: their share waits for them in a deep queue (the default, 1,000, drops)
                 "max_queued_messages 2000000", "max_queued_bytes 0",
                 # a collector acknowledges after storing a batch: let a batch's worth be in flight
                 "max_inflight_messages 1000", "persistence false", "set_tcp_nodelay true",
                 f"log_dest file {self.dir / 'mosquitto.log'}", "log_type error", "log_type warning"]
        if os.geteuid() == 0:
            lines.append("user root")
        conf.write_text("\n".join(lines) + "\n")
        mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([mosquitto, "-c", str(conf)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT, preexec_fn=_raise_nofile)
        _wait_port(self.port, self.proc, "mosquitto")
        return self

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None


class Database:
    """A PostgreSQL server for the benchmark, one fresh database per :meth:`create`."""

    def __init__(self) -> None:
        from tests.services import Postgres, postgres_bindir

        bindir = postgres_bindir()
        if bindir is None:
            raise SystemExit("PostgreSQL is not installed: make test-debs (Debian package postgresql)")
        self.server = Postgres(Path(tempfile.mkdtemp(prefix="edgekit-bench-pg-")), bindir)

    def start(self) -> Database:
        self.server.start()
        return self

    def create(self, name: str) -> str:
        return self.server.createdb(name)

    def stop(self) -> None:
        self.server.stop()
        shutil.rmtree(self.server.dir, ignore_errors=True)


def start_collector(broker: Broker, db: str, model: Path, *, collector_id: str, log: Path) -> subprocess.Popen[bytes]:
    """``edgekit fleet watch`` (a stable id: a persistent session, so its share of the telemetry waits for it)."""
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "edgekit.cli", "fleet", "watch", "--broker", broker.url, "--db", db, "--model",
                                 str(model), "--id", collector_id, "--json"], env=ENV, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT)


def wait_online(broker: Broker, collector_ids: list[str], timeout: float = 60.0) -> None:
    """Until every collector's retained presence says online."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    seen: set[str] = set()
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-peek-{os.getpid()}")
    c.on_message = lambda cl, u, m: seen.add(m.topic.rsplit("/", 1)[-1]) if b'"online"' in m.payload else None
    c.connect("127.0.0.1", broker.port)
    c.subscribe("edgekit/v1/fleet/monitor/collectors/+", qos=1)
    c.loop_start()
    deadline = time.monotonic() + timeout
    try:
        while not set(collector_ids) <= seen:
            if time.monotonic() > deadline:
                raise RuntimeError(f"collectors {sorted(set(collector_ids) - seen)} did not come online within {timeout:g} s")
            time.sleep(0.2)
    finally:
        c.loop_stop()
        c.disconnect()


@dataclasses.dataclass
class Fleet:
    """The simulator processes of one run."""

    procs: list[subprocess.Popen[bytes]]
    outs: list[Path]

    def wait(self, timeout: float) -> dict[str, Any]:
        """Wait for every process; their results merged: {"stats": summed, "devices": {...}}."""
        deadline = time.monotonic() + timeout
        for p in self.procs:
            p.wait(max(1.0, deadline - time.monotonic()))
        merged: dict[str, Any] = {"stats": {"published": 0, "late_max_s": 0.0}, "devices": {}}
        for out in self.outs:
            doc = json.loads(out.read_text())
            merged["stats"]["published"] += doc["stats"]["published"]
            merged["stats"]["late_max_s"] = max(merged["stats"]["late_max_s"], doc["stats"]["late_max_s"])
            merged["devices"].update(doc["devices"])
        return merged

    def kill(self) -> None:
        for p in self.procs:
            _stop(p)


def start_simulators(broker: Broker, model: Path, *, devices: int, interval: float, samples: int, duration: float, seqs: Path,
                     workdir: Path, ramp: float) -> tuple[Fleet, float]:
    """Simulator processes for ``devices`` devices; returns them and the wall time they start sending at."""
    start_at = time.time() + ramp + 5.0
    procs, outs = [], []
    for first in range(0, devices, PER_PROCESS):
        out = workdir / f"sim-{first}.json"
        procs.append(subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "scale_sim.py"), "--port", str(broker.port), "--model", str(model),
                                       "--first", str(first), "--count", str(min(PER_PROCESS, devices - first)), "--interval", str(interval),
                                       "--samples", str(samples), "--duration", str(duration), "--start-at", str(start_at),
                                       "--ramp", str(ramp), "--seqs", str(seqs), "--out", str(out)],
                                      env=ENV, cwd=ROOT, stdin=subprocess.DEVNULL, preexec_fn=_raise_nofile))
        outs.append(out)
    return Fleet(procs, outs), start_at


def load_history(store: Any, model: Path, *, devices: int, interval: float, samples: int, span_s: float) -> dict[str, int]:
    """File ``span_s`` seconds of windows per device ending now (states first); returns each device's last sequence number."""
    from device_agent.contract.protocol import DeviceStatus, StateMessage, TelemetryMessage

    t = Templates(model, samples=samples)
    store.record_states([StateMessage(device_name(i), DeviceStatus.ONLINE, time.time(), 1, "sim", group_of(i),
                                      {**t.model, "artifact": "model.onnx"}) for i in range(devices)])
    now = time.time()
    per_device = int(span_s // interval)
    batch: list[tuple[TelemetryMessage, bytes]] = []
    for k in range(per_device):
        end = now - span_s + (k + 1) * interval
        for i in range(devices):
            batch.append(t.window(i, k + 1, end - interval, end))
            if len(batch) >= 2000:
                store.add_batch(batch, collector="history")
                batch = []
    if batch:
        store.add_batch(batch, collector="history")
    return {device_name(i): per_device for i in range(devices)}


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 20.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout:g} s")


def _stop(proc: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


__all__ = ["GROUPS", "Broker", "Database", "Fleet", "load_history", "start_collector", "start_simulators", "wait_online"]
