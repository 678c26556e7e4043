"""What benchmarks/serving.py drives: the agent and the FastAPI baseline as processes, and wrk as the load.

wrk (Debian package ``wrk``) is a real load generator in C: keep-alive connections, a Lua script
for the POST body, latency percentiles from its HdrHistogram. Without it the benchmark installs it
with apt-get when run as root, and otherwise says how to.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: the percentiles of a wrk run's latency kept beside p50 and p99 (Load.spectrum_ms)
SPECTRUM = ("p90", "p95", "p98", "p99.5", "p99.9")

_LUA = r"""
wrk.method = "POST"
local f = assert(io.open(os.getenv("EDGEKIT_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = os.getenv("EDGEKIT_CTYPE")
local auth = os.getenv("EDGEKIT_AUTH")
if auth and #auth > 0 then wrk.headers["Authorization"] = auth end
done = function(summary, latency, requests)
  io.write(string.format('WRK {"requests": %d, "duration_us": %d, "status_errors": %d, "connect_errors": %d, "read_errors": %d, ' ..
    '"write_errors": %d, "timeouts": %d, "p50_us": %d, "p99_us": %d, "max_us": %d, "spectrum_us": [%d, %d, %d, %d, %d]}\n',
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.timeout, latency:percentile(50), latency:percentile(99), latency.max, latency:percentile(90),
    latency:percentile(95), latency:percentile(98), latency:percentile(99.5), latency:percentile(99.9)))
end
"""


def ensure_wrk() -> str:
    """The wrk binary; installed with apt-get when missing and running as root."""
    exe = shutil.which("wrk")
    if exe:
        return exe
    if os.geteuid() != 0:
        raise SystemExit("benchmarks/serving.py needs wrk (a C HTTP load generator): sudo apt-get install wrk")
    print("wrk is not installed: installing the Debian package (apt-get install wrk) ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "wrk"], check=True, env=env)
    exe = shutil.which("wrk")
    if not exe:
        raise SystemExit("apt-get did not install wrk; install it by hand (apt-get install wrk)")
    return exe


@dataclass
class Load:
    """One wrk run: successful requests per second and latency (ms) of all requests."""

    requests: int
    ok_per_s: float
    p50_ms: float
    p99_ms: float
    non2xx: int
    socket_errors: int
    #: more of the latency distribution (ms): SPECTRUM's percentiles, as wrk's histogram has them
    spectrum_ms: dict[str, float] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return self.non2xx + self.socket_errors


def wrk(url: str, body: bytes, ctype: str, *, connections: int, seconds: float, auth: str = "", timeout_s: float = 10) -> Load:
    """POST ``body`` to ``url`` from ``connections`` keep-alive connections for ``seconds``."""
    work = Path(tempfile.mkdtemp(prefix="edgekit-wrk-"))
    (work / "body").write_bytes(body)
    (work / "post.lua").write_text(_LUA)
    env = {**os.environ, "EDGEKIT_BODY": str(work / "body"), "EDGEKIT_CTYPE": ctype, "EDGEKIT_AUTH": auth}
    cmd = [ensure_wrk(), "-t", str(min(2, connections)), "-c", str(connections), "-d", f"{seconds:g}s", "--timeout", f"{timeout_s:g}s",
           "-s", str(work / "post.lua"), url]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=seconds + 120)
    shutil.rmtree(work, ignore_errors=True)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("WRK ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {r.stdout[-1000:]} {r.stderr[-1000:]}")
    d = json.loads(line[4:])
    ok = d["requests"] - d["status_errors"]
    return Load(d["requests"], ok / (d["duration_us"] / 1e6), d["p50_us"] / 1e3, d["p99_us"] / 1e3, d["status_errors"],
                d["connect_errors"] + d["read_errors"] + d["write_errors"] + d["timeouts"],
                dict(zip(SPECTRUM, [v / 1e3 for v in d["spectrum_us"]], strict=True)))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A server process (the agent or the baseline) on ``port``; ``rss_mb()`` reads its resident memory."""

    def __init__(self, name: str, cmd: list[str], port: int, *, env: dict[str, str] | None = None, ready_path: str = "/readyz",
                 state: Path | None = None) -> None:
        self.name, self.port = name, port
        self.state = state  # removed on stop (an agent's state directory: its copy of the model, outbox, logs)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, **(env or {})},
                                     start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited: {self.proc.stderr.read().decode()[-2000:] if self.proc.stderr else ''}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                c.request("GET", ready_path)
                if c.getresponse().status in (200, 405):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{name} did not start on port {port}")

    def status(self, key: str) -> int:
        """A /proc/<pid>/status value in bytes (VmRSS, VmHWM)."""
        line = next(ln for ln in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines() if ln.startswith(key + ":"))
        return int(line.split()[1]) * 1024

    def rss_mb(self) -> float:
        return self.status("VmRSS") / 2**20

    def reset_peak(self) -> None:
        """Start VmHWM over from the current RSS (root may write another process's clear_refs)."""
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.state is not None:
            shutil.rmtree(self.state, ignore_errors=True)


def start_agent(model_dir: Path, work: Path, *, threads: int, broker: str, api: dict[str, object] | None = None) -> Server:
    """``edgekit-agent run`` on ``model_dir`` (telemetry to ``broker`` when given), as deployed."""
    from device_agent.config import render_toml

    port = free_port()
    state = work / f"agent-{port}"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    config = state / "agent.toml"
    config.write_text(render_toml({"device": {"id": f"bench-{port}"}, "broker": {"url": broker}, "api": {"port": port, **(api or {})},
                                   "model": {"path": str(model_dir), "threads": threads, "prefer": ["ort"]},
                                   "telemetry": {"interval_s": 5.0}}, state_dir=str(state)))
    code = "import sys; from device_agent.cli import main; sys.exit(main())"
    return Server("agent", [sys.executable, "-c", code, "run", "--config", str(config)], port, env={"PYTHONPATH": str(ROOT)}, state=state)


def start_baseline(model_file: Path, *, threads: int) -> Server:
    """FastAPI + uvicorn (uvloop, httptools) + orjson around one onnxruntime session, one process."""
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "serving_baseline:app", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--loop", "uvloop", "--http", "httptools", "--log-level", "warning", "--no-access-log"]
    env = {"EDGEKIT_BASELINE_MODEL": str(model_file), "EDGEKIT_BASELINE_THREADS": str(threads),
           "PYTHONPATH": str(Path(__file__).resolve().parent)}
    return Server("fastapi", cmd, port, env=env, ready_path="/v1/predict")
