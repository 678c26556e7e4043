"""A device process for kill -9 tests: ``python -m tests.ota.crash_device ROOT INITIAL RELEASE JOB KEYFILE``.

KEYFILE is the trusted public key; the private key beside it (same stem, ``.key``) signs the deploy
command, which is written to ROOT once and delivered again, byte for byte, after a crash (a QoS 1
redelivery). Deploys RELEASE as JOB (chunks replayed by a fake broker, as retained messages would be) and serves
requests until the job is final, then prints one JSON line: the served version, the job's final
state, the store's consistency problems. Run it with ``EDGEKIT_CRASHPOINT`` to die at that point;
run it again without to resume.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from device_agent.contract.protocol import Command, CommandKind, decode, encode
from device_agent.ota import OtaSettings, OtaState
from device_agent.ota.job import ProbationPolicy
from device_agent.ota.verify import load_trusted_keys
from edgekit.fleet.jobs import Release, signed_command
from edgekit.signing import load_private_key
from tests.ota.harness import DEVICE, Device, FakeBroker


def command(root: Path, rel: Release, job: str, pub: str) -> Command:
    """The deploy command of this device's job: signed once, then the same bytes on every run."""
    saved = root / "command.json"
    if not saved.exists():
        cmd = signed_command(CommandKind.DEPLOY, job, device=DEVICE, params=rel.job_params(chunk_size=2048),
                             key=load_private_key(Path(pub).with_suffix(".key")))
        saved.write_bytes(encode(cmd))
    msg = decode(saved.read_bytes())
    assert isinstance(msg, Command)
    return msg


def main(root: str, initial: str, release: str, job: str, pub: str) -> None:
    rel = Release.open(release)
    broker = FakeBroker()
    broker.chunks[job] = list(rel.chunks(job, 2048))
    settings = OtaSettings(probation=ProbationPolicy(requests=30, seconds=60, min_requests=10, max_latency_ratio=1000.0,
                                                    latency_floor_ms=10_000.0))  # CPU contention in CI is not a regression
    dev = Device(Path(root), Path(initial), trusted=load_trusted_keys([pub]), settings=settings, broker=broker)
    versions = {dev.version}
    fresh = not (Path(root) / "deployed").exists()
    if fresh:  # like a QoS 1 command: acknowledged (the marker) only after the handler returned, else redelivered
        dev.updater.handle(command(Path(root), rel, job, pub))
        (Path(root) / "deployed").touch()
    rng = np.random.default_rng(0)
    deadline = time.monotonic() + 30
    final = None
    while time.monotonic() < deadline:
        out = dev.predict(rng.standard_normal((1, 16)).astype(np.float32))
        versions.add(dev.version)
        assert out is not None
        hist = [h for h in dev.updater.status()["history"] if h["job"] == job]
        if hist and dev.updater.state == OtaState.IDLE:
            final = hist[-1]
            break
    dev.stop()
    print(json.dumps({"version": dev.version, "final": final, "problems": dev.store.check(), "versions": sorted(versions),
                      "failed": dev.failed_requests, "slots": dev.store.slots()}))


if __name__ == "__main__":
    main(*sys.argv[1:6])
