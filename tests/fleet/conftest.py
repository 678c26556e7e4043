"""Fleet fixtures: simulated devices (the real updater, one paho client each) on a real Mosquitto."""

from __future__ import annotations

import pytest

from device_agent.ota import OtaSettings
from device_agent.ota.job import ProbationPolicy
from tests.fleet.sim import SimDevice, Traffic
from tests.ota.conftest import keys, releases, signer, trusted  # noqa: F401 - shared fixtures

SIM_SETTINGS = OtaSettings(probation=ProbationPolicy(requests=20, seconds=5, min_requests=5, max_latency_ratio=50.0, latency_floor_ms=50.0))


@pytest.fixture
def sim_fleet(mosquitto, releases, trusted, tmp_path):  # noqa: F811
    """make(n, faulty=(indexes...), group=) → devices, all online, with a traffic thread running."""
    made: list[SimDevice] = []
    traffic: list[Traffic] = []

    def make(n: int, *, faulty: tuple[int, ...] = (), group: str = "cams", prefix: str = "pi"):
        devs = [SimDevice(f"{prefix}-{i:02d}", tmp_path / f"{prefix}-{i:02d}", releases["v1"], broker_port=mosquitto.port, trusted=trusted,
                          group=group, settings=SIM_SETTINGS, faulty=i in faulty) for i in range(n)]
        made.extend(devs)
        for d in devs:
            assert d.connected.wait(10)
        t = Traffic(devs, rate=400.0).__enter__()
        traffic.append(t)
        return devs

    yield make
    for t in traffic:
        t.__exit__()
    for d in made:
        d.stop()
