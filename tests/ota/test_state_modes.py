"""The agent's state is its own whatever the umask: every file it writes is 0600, every directory it makes 0700 — ota.json,
the outbox, the replay record, the store's pointers and the versions in it — after a start and an update over MQTT."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

AGENT = """
import json, os, sys, time
from pathlib import Path
os.umask(int(sys.argv[1], 8))
from device_agent.daemon import Daemon
from edgekit.fleet.client import FleetClient
from edgekit.fleet.jobs import Release
from edgekit.fleet.rollout import RolloutPolicy, deploy
from edgekit.signing import load_private_key
from tests.ota.test_agent_ota import Load, config

class Broker:
    url, host, port = sys.argv[3], "127.0.0.1", int(sys.argv[3].rsplit(":", 1)[1])

work, v1, v2, pub, key = map(Path, sys.argv[2:3] + sys.argv[4:8])
daemon = Daemon.from_config(config(work, Broker, v1, pub, probation_requests=10, probation_min_requests=5))
daemon.start()
load = Load(daemon.agent)
try:
    with FleetClient(Broker.url) as fc:
        time.sleep(0.5)
        r = deploy(fc, Release.open(v2), devices=["pi-07"], key=load_private_key(key), policy=RolloutPolicy(device_timeout_s=60, chunk_size=2048))
finally:
    load.stop()
    daemon.stop()
state = work / "state"
modes = {str(p.relative_to(work)): oct(p.stat().st_mode & 0o777) for p in [state, *state.rglob("*")]}
print(json.dumps({"outcome": r.outcomes["pi-07"]["state"], "modes": modes}))
"""


@pytest.mark.parametrize("umask", ["022", "000"])
def test_state_files_are_0600_and_directories_0700_whatever_the_umask(tmp_path, mosquitto, releases, keys, umask):
    work = tmp_path / "dev"
    work.mkdir()
    r = subprocess.run([sys.executable, "-c", AGENT, umask, str(work), mosquitto.url, str(releases["v1"]), str(releases["v2"]),
                        str(keys["good"].public), str(keys["good"].private)], capture_output=True, text=True, timeout=180, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    assert doc["outcome"] == "SUCCEEDED"
    modes = doc["modes"]
    for name in ("state/ota.json", "state/outbox.sqlite", "state/replay.sqlite", "state/models/pointers.json",
                 "state/models/versions/1.1.0/edgekit.json", "state/models/versions/1.1.0/mlp.onnx"):
        assert name in modes, sorted(modes)
    wrong = {n: m for n, m in modes.items() if m != ("0o700" if (work / n).is_dir() else "0o600")}
    assert wrong == {}, f"umask {umask}: {wrong}"
