"""``edgekit-agent`` as a process: run → ready → predict → SIGTERM; SIGKILL → Last Will; check; errors."""

import json
import os
import signal
import subprocess
import sys
import urllib.request

import numpy as np
import pytest

from device_agent.config import render_toml
from tests.agent.agent_helpers import free_port, wait_until

AGENT = [sys.executable, "-c", "import sys; from device_agent.cli import main; sys.exit(main())"]


def write_config(tmp_path, model_dir, broker=None, port=None, **sections):
    values = {"device": {"id": "pi-07"}, "model": {"path": str(model_dir)}, "api": {"port": port or free_port()},
              "broker": {"url": broker.url if broker else "", "reconnect_min_s": 0.05, "reconnect_max_s": 0.3}, **sections}
    p = tmp_path / "agent.toml"
    p.write_text(render_toml(values, state_dir=str(tmp_path / "state")))
    return p, values["api"]["port"]


def get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return None, b""


def start(config):
    return subprocess.Popen([*AGENT, "run", "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop(proc, sig=signal.SIGTERM):
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=5)
    return proc.returncode, err


@pytest.mark.slow
def test_run_serves_publishes_and_stops_cleanly_on_sigterm(tmp_path, digits_dir, digits, mosquitto, mqtt_collector):
    states = mqtt_collector(mosquitto, ["edgekit/v1/+/state"])
    config, port = write_config(tmp_path, digits_dir, mosquitto)
    proc = start(config)
    try:
        wait_until(lambda: get(port, "/readyz")[0] == 200 or proc.poll() is not None, 20, what="the agent to be ready")
        assert proc.poll() is None, proc.communicate()[1]
        x = np.load(digits["eval"])["x"][:2]
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/predict", data=json.dumps({"inputs": {"x": x.tolist()}}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            body = json.loads(r.read())
        assert len(body["outputs"]["logits"]) == 2 and len(body["top_k"][0]) == 5
        states.wait_for(lambda c: any(s["status"] == "online" for s in c.payloads("pi-07/state")), 10, "the birth message")
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert "serving digits" in err and "ready in" in err
    states.wait_for(lambda c: c.payloads("pi-07/state")[-1]["status"] == "offline", 10, "the offline state")
    assert states.payloads("pi-07/state")[-1]["reason"] == "shutdown"


@pytest.mark.slow
def test_a_killed_agent_is_marked_offline_by_its_last_will(tmp_path, digits_dir, mosquitto, mqtt_collector):
    states = mqtt_collector(mosquitto, ["edgekit/v1/+/state"])
    config, port = write_config(tmp_path, digits_dir, mosquitto)
    proc = start(config)
    try:
        states.wait_for(lambda c: any(s["status"] == "online" for s in c.payloads("pi-07/state")), 20, "the birth message")
    finally:
        stop(proc, signal.SIGKILL)
    states.wait_for(lambda c: c.payloads("pi-07/state")[-1]["status"] == "offline", 10, "the Last Will")
    will = states.payloads("pi-07/state")[-1]
    assert will["reason"] == "lwt" and will["device"] == "pi-07"
    birth = [s for s in states.payloads("pi-07/state") if s["status"] == "online"][-1]
    # (boot, seq) orders them: the will ends the connection the birth started
    assert (will["boot"], will["seq"]) > (birth["boot"], birth["seq"]) and will["seq"] >> 20 == birth["seq"] >> 20


def test_check_reports_the_model_and_selftest(tmp_path, digits_dir):
    config, _ = write_config(tmp_path, digits_dir)
    r = subprocess.run([*AGENT, "check", "--config", str(config), "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["ready"] is True and info["selftest"]["passed"] and info["model"]["format"] == "ort"


def test_config_errors_are_one_line_and_exit_1(tmp_path, digits_dir):
    config, _ = write_config(tmp_path, digits_dir)
    config.write_text(config.read_text().replace("port = ", "port = 99999 #"))
    r = subprocess.run([*AGENT, "run", "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "error:" in r.stderr and "[api] port 99999 must be between 0 and 65535" in r.stderr
    r = subprocess.run([*AGENT, "run"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--config" in r.stderr


def test_port_in_use_is_a_clear_error(tmp_path, digits_dir):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        config, _ = write_config(tmp_path, digits_dir, port=s.getsockname()[1])
        r = subprocess.run([*AGENT, "run", "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "cannot listen on 127.0.0.1" in r.stderr and "change [api] host/port" in r.stderr


def test_device_agent_imports_no_heavy_framework(tmp_path, digits_dir):
    code = f"""
import sys
from device_agent.serve.agent import Agent
import device_agent.cli, device_agent.config, device_agent.link.mqtt, device_agent.serve.openapi, device_agent.link.outbox, device_agent.serve.server
import device_agent.daemon, device_agent.link.reporter, device_agent.link.commands
import numpy as np
a = Agent.open({str(digits_dir)!r})
a.predict({{"x": np.zeros((1, 1, 8, 8), np.float32)}})
heavy = {{"torch", "tensorflow", "onnx", "pydantic", "edgekit", "click", "keras", "jax", "yaml", "matplotlib", "sklearn", "scipy"}}
print(sorted({{m.split(".")[0] for m in sys.modules}} & heavy))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": ""})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads the agent's page-fault count from /proc")
def test_a_600_kb_body_is_not_faulted_in_page_by_page_on_every_request(tmp_path):
    """``edgekit-agent run`` tunes glibc so that bodies under 4 MB (a 224x224 image as .npy: 600 KB) reuse
    freed arena memory: mapping each one fresh cost ~150 page faults a request (0.2-0.4 ms of a ~6 ms model)."""
    import http.client
    import io

    from tests.agent.agent_helpers import write_model_dir
    from tests.conftest import build_mlp

    model_dir = write_model_dir(build_mlp(3 * 224 * 224, 4, 2), tmp_path / "model")
    config, port = write_config(tmp_path, model_dir)
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(0).standard_normal((1, 3 * 224 * 224)).astype(np.float32))
    body = buf.getvalue()
    proc = start(config)

    def minor_faults() -> int:
        with open(f"/proc/{proc.pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[7])

    try:
        wait_until(lambda: get(port, "/readyz")[0] == 200 or proc.poll() is not None, 20, what="the agent to be ready")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

        def post() -> None:
            conn.request("POST", "/v1/predict", body=body, headers={"Content-Type": "application/x-npy"})
            r = conn.getresponse()
            assert r.status == 200, r.read()
            r.read()

        for _ in range(20):  # warm-up: the arenas grow to the working set once
            post()
        before = minor_faults()
        for _ in range(100):
            post()
        per_request = (minor_faults() - before) / 100
        conn.close()
    finally:
        stop(proc)
    assert per_request < 30, f"{per_request:.0f} page faults a request for a {len(body):,}-byte body (a fresh mapping is ~{len(body) // 4096})"


def test_the_heap_is_frozen_when_a_model_starts_serving_and_thawed_and_collected_when_another_does(digits_dir):
    """Full collections skip what the served model left (gc.freeze); an update's old model is still collected."""
    import gc
    import weakref

    from device_agent.cli import HeapSettler
    from device_agent.serve.agent import Agent

    class Cycle:
        pass

    first, second = Agent.open(digits_dir).model, Agent.open(digits_dir).model
    now = [0.0]
    heap = HeapSettler(every_s=600, clock=lambda: now[0])
    try:
        old = Cycle()
        old.me = old  # a reference cycle that only the collector frees, alive when the heap is settled
        gone = weakref.ref(old)
        assert heap.check(first) and gc.get_freeze_count() > 0 and not heap.check(first)
        del old
        gc.collect()
        assert gone() is not None  # frozen: collections leave it alone
        assert heap.check(second) and gone() is None  # another model: thawed, collected, frozen again
        again = Cycle()
        again.me = again
        gone = weakref.ref(again)
        now[0] = 599.0
        assert not heap.check(second)
        now[0] = 601.0
        assert heap.check(second)  # every every_s with the same model: frozen now
        del again
        gc.collect()
        assert gone() is not None
        now[0] = 1202.0
        assert heap.check(second) and gone() is None
    finally:
        gc.unfreeze()
