"""A device without MQTT for OTA tests: store + updater + served model + a request loop.

Chunks are "published" into a fake broker that replays them when the updater subscribes (as
Mosquitto replays retained messages), optionally tampered with by the test.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from device_agent.contract.errors import AgentError
from device_agent.contract.protocol import Command, CommandKind, JobState
from device_agent.ota import FINAL, JobReport, OtaSettings, OtaState, ServingModel
from device_agent.ota.gate import Identity
from device_agent.ota.store import ModelStore
from device_agent.ota.updater import Updater
from device_agent.ota.verify import TrustedKeys
from device_agent.runtime.model import load_model
from edgekit.fleet.jobs import Release, signed_command

#: the simulated device's identity: commands name it
DEVICE = "dev"

FINAL_JOB = (JobState.SUCCEEDED, JobState.FAILED, JobState.REJECTED, JobState.TIMED_OUT, JobState.CANCELED)


def wait_until(cond: Callable[[], bool], timeout: float = 20.0, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


class FakeBroker:
    """Holds "retained" chunks per job; replays them (in a given order) on subscribe."""

    def __init__(self) -> None:
        self.chunks: dict[str, list[tuple[int, bytes]]] = {}
        self.device: Device | None = None
        self.subscribed: list[str] = []

    def subscribe(self, topic_filter: str) -> None:
        self.subscribed.append(topic_filter)
        job = topic_filter.split("/")[-3]
        items = list(self.chunks.get(job, []))

        def replay() -> None:
            for n, payload in items:
                self.device.updater.on_chunk(f"edgekit/v1/dev/ota/{job}/chunk/{n}", payload)

        threading.Thread(target=replay, daemon=True).start()

    def unsubscribe(self, topic_filter: str) -> None:
        pass


class Device:
    """One simulated device. ``predict`` goes through the served model and reports to the updater.

    ``key`` signs the deploy commands :meth:`deploy` sends (the fleet's ``--key``); None sends them unsigned.
    """

    def __init__(self, root: Path, initial: Path | None, *, trusted: TrustedKeys, settings: OtaSettings | None = None,
                 broker: FakeBroker | None = None, start: bool = True, key=None, group: str = "default") -> None:
        self.root = Path(root)
        self.key = key
        self.store = ModelStore(self.root / "models", keep=3)
        if self.store.current is None and initial is not None:
            self.store.adopt(initial)
        self.reports: list[JobReport] = []
        self.serving = ServingModel(None)
        self.broker = broker or FakeBroker()
        self.broker.device = self
        self.updater = Updater(self.store, self.root / "ota.json", trusted=trusted, get_model=self.serving.get, swap=self.serving.swap,
                               loader=lambda p: load_model(p, threads=1), report=self.reports.append,
                               settings=settings or OtaSettings(), transport=self.broker, identity=Identity(DEVICE, group),
                               chunk_filter=lambda job: f"edgekit/v1/dev/ota/{job}/chunk/+")
        path = self.updater.boot()
        self.serving.model = load_model(path, threads=1) if path else None
        if start:
            self.updater.start()
        self.failed_requests = 0

    # --- serving --------------------------------------------------------------------------------
    def predict(self, x: np.ndarray) -> dict[str, np.ndarray] | None:
        m = self.serving.get()
        t0 = time.perf_counter()
        try:
            out = m.run({"x": x})
        except AgentError:
            self.updater.observe(m, {"x": x}, None, None, "runtime")
            self.failed_requests += 1
            return None
        self.updater.observe(m, {"x": x}, out, time.perf_counter() - t0)
        return out

    @property
    def version(self) -> str:
        return self.serving.get().version

    # --- fleet side ----------------------------------------------------------------------------
    def deploy(self, release_dir: Path, job: str, *, chunk_size: int = 4096, tamper: Callable[[list], list] | None = None,
               params: dict | None = None, **kw) -> Command:
        """Send a deploy command for ``release_dir`` (signed with the device's ``key``), its chunks "retained"."""
        rel = Release.open(release_dir)
        p = params if params is not None else rel.job_params(chunk_size=chunk_size, **kw)
        chunks = list(rel.chunks(job, chunk_size))
        self.broker.chunks[job] = tamper(chunks) if tamper else chunks
        cmd = signed_command(CommandKind.DEPLOY, job, device=DEVICE, params=p, key=self.key)
        self.updater.handle(cmd)
        return cmd

    def command(self, kind: CommandKind, job: str, *, key=None, params: dict | None = None) -> Command:
        cmd = signed_command(kind, job, device=DEVICE, params=params, key=key)
        self.updater.handle(cmd)
        return cmd

    def final(self, job: str) -> JobReport | None:
        """The job's final state as the fleet keeps it (recorded reports); for a job never accepted, the answer to its command."""
        recorded = [r for r in self.reports if r.job == job and r.record]
        if not recorded:
            return self.answer(job)
        return next((r for r in reversed(recorded) if r.state in FINAL_JOB), None)

    def answer(self, job: str) -> JobReport | None:
        """The last answer to a command of ``job`` the device did not accept (not recorded, not retained)."""
        return next((r for r in reversed(self.reports) if r.job == job and not r.record), None)

    def wait_final(self, job: str, *, load: bool = True, timeout: float = 30.0) -> JobReport:
        """Serve requests (so probation can decide) until the job has a final recorded report and the updater is idle."""
        rng = np.random.default_rng(0)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = self.final(job)
            if done is not None and done.record and self.updater.state == OtaState.IDLE:
                return done
            if load:
                self.predict(rng.standard_normal((1, 16)).astype(np.float32))
            else:
                time.sleep(0.01)
        raise AssertionError(f"job {job} did not finish in {timeout} s; state {self.updater.state}, reports {self.reports}")

    def stop(self) -> None:
        self.updater.stop()

    def crash(self) -> None:
        """Stop the updater thread the way a crash would: nothing persisted, no clean-shutdown mark."""
        u = self.updater
        u._stop.set()
        u._wake.set()
        if u._thread is not None:
            u._thread.join(5)
        u._thread = None
        u.stop = lambda *a, **k: None  # the fixture's teardown must not mark this run clean


__all__ = ["DEVICE", "FINAL", "Device", "FakeBroker", "wait_until"]
