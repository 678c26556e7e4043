"""The agent's container image (device_agent/deploy/Dockerfile), built with buildah on a Debian base made
here (scripts/container-base.sh) and run with `buildah run --isolation chroot`: its size, its user and
contents, and the agent in it serving the compressed digits model, reporting over MQTT, passing the
image's HEALTHCHECK and stopping cleanly.

The module's tests share one running container (``served``) and run in file order: the last one stops it.
"""

from __future__ import annotations

import json
import platform
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest

from tests.agent.agent_helpers import free_port, wait_until
from tests.conftest import MOSQUITTO_BIN, Mosquitto, MqttCollector
from tests.container.buildah import Buildah, Container
from tests.container.conftest import AgentImage
from tests.services import need

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # the first test builds the base (~3 min, cached) and the image
AGENT_UID = 10001
SIZE_GOAL_MB = 250  # amd64, as `buildah images` / `docker images` count it
DEVICE = "container-test"


def image_config(b: Buildah, tag: str) -> dict:
    """The image's Docker config: User, Entrypoint, Cmd, Env, Healthcheck, ..."""
    return json.loads(b("inspect", "--type", "image", tag))["Docker"]["config"]


@dataclass
class Served:
    container: Container
    proc: subprocess.Popen
    port: int
    log: Path
    telemetry: MqttCollector
    healthcheck: list[str]
    volumes: tuple[str, ...]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def agent(self) -> psutil.Process:
        """The agent process inside the container (buildah run's descendant)."""
        procs = [p for p in psutil.Process(self.proc.pid).children(recursive=True) if "edgekit-agent" in " ".join(p.cmdline())]
        assert procs, f"no edgekit-agent process under buildah run:\n{self.log.read_text(errors='replace')[-2000:]}"
        return procs[-1]


def predict(served: Served, x: np.ndarray) -> dict:
    req = urllib.request.Request(served.url("/v1/predict"), data=json.dumps({"inputs": {"x": x.tolist()}}).encode(),
                                 headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=30).read())


def write_config(directory: Path, *, api_port: int, broker: Mosquitto) -> Path:
    """/etc/edgekit as the README's `-v /etc/edgekit:/etc/edgekit:ro` mounts it (readable by the agent's user)."""
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)  # pytest's temporary directories are private to root; the agent is not root
    config = directory / "agent.toml"
    config.write_text(f"""state_dir = "/var/lib/edgekit"
[device]
id = "{DEVICE}"
[broker]
url = "{broker.url}"
reconnect_min_s = 0.1
[model]
path = "/var/lib/edgekit/model"
threads = 1
[api]
host = "127.0.0.1"
port = {api_port}
[telemetry]
interval_s = 0.5
""")
    config.chmod(0o644)
    return directory


@pytest.fixture(scope="module")
def served(agent_image: AgentImage, buildah: Buildah, digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The image's ENTRYPOINT + CMD running the digits model, the config mounted read-only, a broker on loopback."""
    need(MOSQUITTO_BIN, "mosquitto is not installed", "run 'make mosquitto'")
    work = tmp_path_factory.mktemp("served")
    broker = Mosquitto(work / "mosquitto").start()
    telemetry: MqttCollector | None = None
    container: Container | None = None
    proc: subprocess.Popen | None = None
    try:
        telemetry = MqttCollector(broker, [f"edgekit/v1/{DEVICE}/telemetry"])
        container = Container(buildah, agent_image.tag)
        config = image_config(buildah, agent_image.tag)
        container.copy(digits_dir, "/var/lib/edgekit/model", chown=f"{AGENT_UID}:{AGENT_UID}")
        port = free_port()
        etc = write_config(work / "etc-edgekit", api_port=port, broker=broker)
        volumes = (f"{etc}:/etc/edgekit:ro",)
        proc = container.start(*config["Entrypoint"], *config["Cmd"], volumes=volumes, log=work / "agent.log")
        served = Served(container, proc, port, work / "agent.log", telemetry, config["Healthcheck"]["Test"][1:], volumes)

        def ready() -> bool:
            assert proc.poll() is None, f"the agent exited {proc.returncode}:\n{served.log.read_text(errors='replace')[-3000:]}"
            try:
                return urllib.request.urlopen(served.url("/readyz"), timeout=2).status == 200
            except OSError:
                return False

        wait_until(ready, 120, interval=0.2, what="the agent in the container to be ready")
        yield served
    finally:
        if proc is not None:
            stop(proc)
        if container is not None:
            container.remove()
        if telemetry is not None:
            telemetry.close()
        broker.stop()


def stop(proc: subprocess.Popen) -> None:
    """Stop `buildah run` and what it runs, if a test failed before the last one stopped the agent."""
    if proc.poll() is not None:
        return
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            pass
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def test_image_is_small_runs_as_non_root_and_carries_no_build_tools(agent_image: AgentImage, buildah: Buildah, capsys):
    size = buildah.size_mb(agent_image.tag)
    with capsys.disabled():
        print(f"\nagent image {agent_image.tag} on {agent_image.base}: {size:.0f} MB ({platform.machine()}), "
              f"built in {agent_image.build_seconds:.0f} s")
    if platform.machine() == "x86_64":
        assert size <= SIZE_GOAL_MB, f"the agent image is {size:.0f} MB; the goal is <= {SIZE_GOAL_MB} MB on amd64"
    config = image_config(buildah, agent_image.tag)
    assert config["User"] == f"{AGENT_UID}:{AGENT_UID}"
    assert config["Healthcheck"]["Test"][0] == "CMD" and "8470/tcp" in config["ExposedPorts"]
    probe = Container(buildah, agent_image.tag)
    try:
        who = probe.run("sh", "-c", "id -u; id -g; stat -c %u /var/lib/edgekit")
        tools = probe.run("sh", "-c", "for t in gcc cc c++ make pip pip3; do command -v $t; done; true")
        heavy = probe.run("python", "-c", "import importlib.util as u; print([m for m in ('onnx', 'torch', 'tensorflow', 'pip', 'setuptools') if u.find_spec(m)])")
    finally:
        probe.remove()
    assert who.returncode == 0 and who.stdout.split() == [str(AGENT_UID)] * 3, who.stdout + who.stderr
    assert tools.stdout.strip() == "", f"build tools in the image: {tools.stdout.split()}"
    assert heavy.returncode == 0 and heavy.stdout.strip() == "[]", heavy.stdout + heavy.stderr


def test_image_holds_exactly_the_lock_a_bundle_for_this_machine_ships(agent_image: AgentImage, buildah: Buildah):
    from device_agent.bundle import Lock, lock_name

    # the local base is Debian 12: Python 3.11, glibc 2.36
    lock_file = Path(__file__).resolve().parents[2] / "device_agent/deploy/locks" / lock_name(f"manylinux_2_36_{platform.machine()}", "3.11")
    lock = Lock.parse(lock_file.read_text(), source=lock_file.name)
    probe = Container(buildah, agent_image.tag)
    try:
        r = probe.run("python", "-c", "import json, importlib.metadata as m; "
                      "print(json.dumps({d.metadata['Name'].lower().replace('_', '-'): d.version for d in m.distributions()}))")
    finally:
        probe.remove()
    assert r.returncode == 0, r.stderr
    installed = json.loads(r.stdout)
    assert installed.pop("edgekit") and installed == lock.pins


def test_agent_in_the_container_answers_like_onnxruntime_here(served: Served, digits: dict[str, Path], digits_dir: Path):
    import onnxruntime as ort

    info = json.loads(urllib.request.urlopen(served.url("/v1/model"), timeout=10).read())
    x = np.load(digits["eval"])["x"][:4]
    body = predict(served, x)
    # the same artifact under this machine's onnxruntime gives the same logits
    sess = ort.InferenceSession(str(digits_dir / info["artifact"]), providers=["CPUExecutionProvider"])
    want = sess.run(["logits"], {sess.get_inputs()[0].name: x})[0]
    got = np.asarray(body["outputs"]["logits"], dtype=np.float32)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert [t[0]["index"] for t in body["top_k"]] == want.argmax(1).tolist()
    assert info["selftest"]["passed"] is True


def test_agent_runs_as_the_image_user(served: Served):
    agent = served.agent()
    assert agent.uids().real == AGENT_UID and agent.uids().effective == AGENT_UID and agent.gids().real == AGENT_UID
    assert agent.is_running() and served.proc.poll() is None


def test_agent_reports_telemetry_to_a_broker_outside(served: Served, digits: dict[str, Path]):
    predict(served, np.load(digits["eval"])["x"][:1])
    served.telemetry.wait_for(lambda c: any(p["requests"] >= 1 for p in c.payloads("telemetry")), 30,
                              "telemetry with a prediction from the agent in the container")


def test_healthcheck_passes_while_serving_and_sigterm_stops_the_agent(served: Served):
    healthy = served.container.run(*served.healthcheck, volumes=served.volumes, timeout=60)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    served.agent().send_signal(signal.SIGTERM)
    assert served.proc.wait(30) == 0, served.log.read_text(errors="replace")[-3000:]
    down = served.container.run(*served.healthcheck, volumes=served.volumes, timeout=60)
    assert down.returncode != 0 and "Connection refused" in down.stderr, down.stdout + down.stderr
