"""Part 1 of benchmarks/ota.py: device processes updating through a pool of releases, SIGKILLed at random moments.

    python benchmarks/ota.py --only kills --kills 200      # the way to run it
    python benchmarks/ota_kills.py ROOT POOL PUB [final]   # one device process (what the benchmark starts)

Every restart must come up serving an installed, verified model with a consistent store.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: kills per device root before its final check run
PER_ROOT = 5


def make_pool(root: Path, n: int, key) -> list[Path]:
    """Signed releases 1.0.1 .. 1.0.n of the 16→4 MLP; every 4th gives NaN on live inputs."""
    from edgekit.signing import sign_dir
    from tests.ota.models import make_model_dir, mlp, nan_mlp

    out = []
    base = make_model_dir(root / "v1.0.0", mlp(0), version="1.0.0")
    sign_dir(base, key)
    out.append(base)
    for i in range(1, n + 1):
        broken = i % 4 == 0
        d = make_model_dir(root / f"v1.0.{i}", nan_mlp(i) if broken else mlp(i), version=f"1.0.{i}", vectors=0 if broken else 2)
        sign_dir(d, key)
        out.append(d)
    return out


# --- the device process ----------------------------------------------------------------------------

def device_process(root: str, pool_dir: str, pub: str, final: str = "") -> None:
    """The device side (run as a subprocess): boot, say how it came up, keep updating."""
    from device_agent.contract.manifest import version_key
    from device_agent.contract.protocol import CommandKind
    from device_agent.ota import OtaSettings, OtaState
    from device_agent.ota.job import ProbationPolicy
    from device_agent.ota.verify import load_trusted_keys
    from edgekit.fleet.jobs import Release, signed_command
    from edgekit.signing import load_private_key
    from tests.ota.harness import DEVICE, Device, FakeBroker

    pool = sorted(Path(pool_dir).iterdir(), key=lambda p: version_key(p.name[1:]))
    by_job = {f"job-{p.name[1:]}": p for p in pool}

    class LazyChunks(dict):  # "retained" chunks of every release, read only when a job subscribes
        def get(self, job, default=None):
            return list(Release.open(by_job[job]).chunks(job, 1024)) if job in by_job else default

    broker = FakeBroker()
    broker.chunks = LazyChunks()
    settings = OtaSettings(probation=ProbationPolicy(requests=25, seconds=30, min_requests=10, max_latency_ratio=1000.0, latency_floor_ms=50.0,
                                                     latency_samples=10))  # the fewest: the latency judge takes a pair a tick (50 ms)
    dev = Device(Path(root), pool[0], trusted=load_trusted_keys([pub]), settings=settings, broker=broker, start=False)
    key = load_private_key(Path(pub).with_suffix(".key"))
    x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
    out = dev.predict(x)  # what it serves right after recovery, before the updater resumes any job
    _say(event="boot", version=dev.version, state=str(dev.updater.state), problems=dev.store.check(), answered=out is not None,
         current=dev.store.current)
    dev.updater.start()
    reported = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        dev.predict(x)
        for r in dev.reports[reported:]:
            _say(event="report", ota_state=r.ota_state, state=str(r.state))
        reported = len(dev.reports)
        rec = dev.updater.record
        if rec.state == OtaState.IDLE and not rec.queue and rec.job is None:
            if final:  # the check run: finish what was interrupted, start nothing new
                _say(event="settled", version=dev.version, problems=dev.store.check())
                break
            nxt = next((p for p in pool if version_key(p.name[1:]) > version_key(dev.version)
                        and dev.updater.replay.digest(f"job-{p.name[1:]}") is None), None)
            if nxt is None:
                _say(event="exhausted", version=dev.version)
                break
            job = f"job-{nxt.name[1:]}"
            dev.updater.handle(signed_command(CommandKind.DEPLOY, job, device=DEVICE, params=Release.open(nxt).job_params(chunk_size=1024),
                                              key=key))
        time.sleep(0.001)
    dev.stop()


def _say(**kw) -> None:
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


# --- the benchmark -----------------------------------------------------------------------------------

class _Kills:
    """Shared by the worker threads: the kill budget, the random moments, and what the restarts showed."""

    def __init__(self, work: Path, pool: Path, pub: Path, kills: int, seed: int) -> None:
        self.work, self.pool, self.pub, self.kills = work, pool, pub, kills
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.stats = {"kills": 0, "boots": 0, "bad_boots": [], "killed_in": {}, "versions_served": set(), "jobs_finished": 0}
        self.env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.env.pop("EDGEKIT_CRASHPOINT", None)
        self.attempts_left = 3 * kills
        self.next_root = 0

    def enough(self) -> bool:
        return self.stats["kills"] >= self.kills or self.attempts_left <= 0

    def worker(self) -> None:  # roots one after another until enough kills landed (a run may finish before its kill)
        while True:
            with self.lock:
                if self.enough():
                    return
                i = self.next_root
                self.next_root += 1
            self.one_root(i, PER_ROOT)

    def one_root(self, index: int, n: int) -> None:
        root = self.work / f"dev{index}"
        for k in range(n + 1):  # n kills, then one clean run to check the last restart
            with self.lock:
                if k < n and self.enough():
                    k = n  # enough kills overall: finish this root with the check run
                self.attempts_left -= 1
                during_boot = self.rng.random() < 0.1  # 1 in 10 during start-up recovery, the rest while updating
                delay = self.rng.uniform(0.0, 0.8) if during_boot else self.rng.uniform(0.0, 1.5)
            lines, last, returncode = self.run_device(root, final=k == n, kill_after=None if k == n else delay, during_boot=during_boot)
            self.record(root, lines, last, returncode, killed=k < n, final=k == n)
            if k == n:
                break

    def run_device(self, root: Path, *, final: bool, kill_after: float | None, during_boot: bool) -> tuple[list[dict], str, int]:
        """One device process, SIGKILLed ``kill_after`` seconds after its start (``during_boot``) or its boot line."""
        proc = subprocess.Popen([sys.executable, __file__, str(root), str(self.pool), str(self.pub), "final" if final else ""],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=self.env, cwd=ROOT)
        last = "booting"
        lines: list[dict] = []
        killer = None
        if kill_after is not None and during_boot:
            killer = threading.Timer(kill_after, proc.kill)
            killer.start()
        for line in proc.stdout:  # type: ignore[union-attr]
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            lines.append(msg)
            if msg["event"] == "report":
                last = msg["ota_state"]
            elif msg["event"] == "boot":
                last = "IDLE"
                if kill_after is not None and killer is None:
                    killer = threading.Timer(kill_after, proc.kill)
                    killer.start()
        proc.wait(90)
        if killer is not None:
            killer.cancel()
        return lines, last, proc.returncode

    def record(self, root: Path, lines: list[dict], last: str, returncode: int, *, killed: bool, final: bool) -> None:
        boot = next((m for m in lines if m["event"] == "boot"), None)
        settled = next((m for m in lines if m["event"] == "settled"), None)
        stats = self.stats
        with self.lock:
            if boot is not None:
                stats["boots"] += 1
                stats["versions_served"].add(boot["version"])
                if boot["problems"] or not boot["answered"] or boot["current"] != boot["version"]:
                    stats["bad_boots"].append(boot)
            if final and (settled is None or settled["problems"]):
                stats["bad_boots"].append({"final": settled, "root": str(root)})
            stats["jobs_finished"] += sum(1 for m in lines if m["event"] == "report" and m["state"] != "IN_PROGRESS")
            if killed and returncode == -9:
                stats["kills"] += 1
                stats["killed_in"][last] = stats["killed_in"].get(last, 0) + 1


def bench_kills(work: Path, pool: Path, pub: Path, *, kills: int, workers: int, seed: int) -> dict:
    """Kill device processes at ``kills`` random moments; every restart is checked (see the module docstring)."""
    run = _Kills(work, pool, pub, kills, seed)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=run.worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = run.stats
    stats["roots"] = run.next_root
    stats["seconds"] = round(time.perf_counter() - t0, 1)
    stats["versions_served"] = len(stats["versions_served"])
    return stats


if __name__ == "__main__":
    device_process(*sys.argv[1:5])
