"""The demos' device: an ``edgekit-agent run`` process and its local API, and how a demo runs commands and reports stages.

Shared by ``make demo`` (:mod:`edgekit.demo`) and its tabular story (:mod:`edgekit.demo_tabular`).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DEVICE", "GROUP", "Device", "cli", "json_object", "stage"]

DEVICE = "demo-pi"
GROUP = "demo"


def stage(n: int, text: str) -> None:
    print(f"[{n}] {text}", flush=True)


def cli(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run an edgekit command as a user would."""
    proc = subprocess.run([sys.executable, "-m", "edgekit.cli", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise SystemExit(f"demo: `edgekit {' '.join(args)}` failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


class Device:
    """An ``edgekit-agent run`` process and its local API."""

    def __init__(self, root: Path, model: Path, broker: str, trusted_key: Path) -> None:
        self.root = root
        self.port = _free_port()
        root.mkdir(parents=True, exist_ok=True)
        self.config = root / "agent.toml"
        self.config.write_text(
            f'state_dir = "{root / "state"}"\n\n'
            f'[device]\nid = "{DEVICE}"\ngroup = "{GROUP}"\n\n'
            f'[broker]\nurl = "{broker}"\n\n'
            f'[model]\npath = "{model}"\nthreads = 1\n\n'
            f'[api]\nport = {self.port}\n\n'
            f'[telemetry]\ninterval_s = 2.0\n\n'
            f'[security]\ntrusted_keys = ["{trusted_key}"]\n\n'
            f'[ota]\nprobation_requests = 60\nprobation_seconds = 120.0\nprobation_min_requests = 20\n'
        )
        self.log = open(root / "agent.log", "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "device_agent.cli", "run", "--config", str(self.config)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"demo: the agent exited ({self.proc.returncode}); see {self.root / 'agent.log'}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return self.model()
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"demo: the agent was not ready within {timeout:.0f} s; see {self.root / 'agent.log'}")

    def model(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/v1/model", timeout=5) as r:
            return json_object(r.read())

    def predict(self, x: np.ndarray) -> dict[str, Any]:
        body = json.dumps({"inputs": {"x": x.tolist()}}).encode()
        req = urllib.request.Request(f"{self.url}/v1/predict", body, {"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json_object(r.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def json_object(data: str | bytes) -> dict[str, Any]:
    """A JSON object (the agent's and the CLI's answers are objects; anything else is an error)."""
    doc = json.loads(data)
    if not isinstance(doc, dict):
        raise ValueError(f"expected a JSON object, got {type(doc).__name__}")
    return doc
