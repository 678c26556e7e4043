"""A download over MQTT survives a device crash: retained chunks are replayed after the restart."""

from __future__ import annotations

import pytest

from device_agent.contract.protocol import CommandKind
from device_agent.ota import OtaState
from edgekit.fleet.client import FleetClient
from edgekit.fleet.jobs import Release, signed_command
from tests.fleet.conftest import SIM_SETTINGS
from tests.fleet.sim import SimDevice
from tests.ota.harness import wait_until

pytestmark = pytest.mark.slow


def crash(dev: SimDevice) -> None:
    """Die without a clean shutdown: no DISCONNECT (the broker fires the Last Will), nothing persisted."""
    u = dev.updater
    u._stop.set()
    u._wake.set()
    u._thread.join(5)
    dev.client._sock_close()  # the TCP connection just drops
    dev.client.loop_stop()


def test_download_resumes_after_a_crash(mosquitto, releases, trusted, signer, tmp_path):
    rel = Release.open(releases["v2"])
    chunks = list(rel.chunks("j1", 1024))
    assert len(chunks) >= 4
    dev = SimDevice("pi-00", tmp_path / "pi-00", releases["v1"], broker_port=mosquitto.port, trusted=trusted, settings=SIM_SETTINGS)
    assert dev.connected.wait(10)
    with FleetClient(mosquitto.url) as fc:
        half = len(chunks) // 2
        fc.flush(fc.publish_chunks("pi-00", "j1", chunks[:half]))
        fc.flush([fc.send("pi-00", signed_command(CommandKind.DEPLOY, "j1", device="pi-00", params=rel.job_params(chunk_size=1024),
                                                  key=signer))])
        assert wait_until(lambda: dev.updater.runner.receiver is not None and dev.updater.runner.receiver.progress[0] == half, 10)
        crash(dev)
        assert wait_until(lambda: not fc.snapshot()["pi-00"].online, 10)  # the Last Will told the fleet

        again = SimDevice("pi-00", tmp_path / "pi-00", releases["v1"], broker_port=mosquitto.port, trusted=trusted, settings=SIM_SETTINGS)
        try:
            assert again.updater.state == OtaState.DOWNLOADING
            assert wait_until(lambda: again.updater.runner.receiver is not None and again.updater.runner.receiver.progress[0] == half, 10)
            fc.flush(fc.publish_chunks("pi-00", "j1", chunks[half:]))  # the rest arrives; the first half was kept on disk
            x = __import__("numpy").zeros((1, 16), "float32")

            def done():
                again.predict(x)
                u = fc.snapshot()["pi-00"].jobs.get("j1")
                return u is not None and str(u.state) == "SUCCEEDED"

            assert wait_until(done, 20)
            assert again.serving.get().version == "1.1.0" and again.store.check() == []
        finally:
            again.stop()
