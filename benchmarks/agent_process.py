"""The agent as a process, for benchmarks/agent.py and serving.py: a Mosquitto broker, start-up to ready, RSS."""

from __future__ import annotations

import http.client
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_broker(work: Path) -> tuple[subprocess.Popen | None, str]:
    exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if exe is None:
        return None, ""
    port = free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n" + ("user root\n" if os.geteuid() == 0 else ""))
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"mqtt://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    return None, ""


def start_agent(config: Path, port: int, env: dict[str, str]) -> tuple[subprocess.Popen, float]:
    """Start ``edgekit-agent run`` and wait for /readyz 200; returns the process and the seconds it took."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from device_agent.cli import main; sys.exit(main())", "run", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1).status == 200:
                return proc, time.perf_counter() - t0
        except OSError:
            time.sleep(0.005)
    stop_agent(proc)
    raise RuntimeError(f"the agent did not become ready: {proc.stderr.read().decode()[-2000:] if proc.stderr else 'timeout'}")


def stop_agent(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def bench_process(name: str, model_dir: Path, x: np.ndarray, broker: str, work: Path, threads: int) -> dict:
    """`edgekit-agent run` as a process: start-up to ready, and RSS after 200 HTTP predictions.

    Timed on the second start, with bytecode cached (as ``pip install`` leaves it on a device, and as
    every boot after the first finds it): the first start compiles the sources, which a
    ``PYTHONDONTWRITEBYTECODE`` environment would otherwise repeat on every start."""
    port = free_port()
    state = work / f"proc-{name}"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    from device_agent.config import render_toml

    config = state / "agent.toml"
    config.write_text(render_toml({"device": {"id": f"bench-{name}"}, "broker": {"url": broker}, "api": {"port": port},
                                   "model": {"path": str(model_dir), "threads": threads}, "telemetry": {"interval_s": 1.0}},
                                  state_dir=str(state)))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    proc, first_s = start_agent(config, port, env)
    stop_agent(proc)
    proc, ready_s = start_agent(config, port, env)
    try:
        buf = io.BytesIO()
        np.save(buf, x)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for _ in range(200):
            conn.request("POST", "/v1/predict", body=buf.getvalue(), headers={"Content-Type": "application/x-npy"})
            conn.getresponse().read()
        conn.close()
        time.sleep(1.2)  # one telemetry window
        status = Path(f"/proc/{proc.pid}/status").read_text().splitlines()
        rss_kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
        hwm_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    finally:
        stop_agent(proc)
    return {"startup_to_ready_s": ready_s, "first_start_s": first_s, "rss_mb": rss_kb / 1024, "peak_rss_mb": hwm_kb / 1024}
