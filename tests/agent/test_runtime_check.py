"""The runtime on the device against the one the model was validated with (issue 19): the check, the
policy (warn | refuse, how far counts), what /v1/model, `edgekit-agent check|run`, the state and
telemetry messages and an OTA promotion make of it."""

import json
import subprocess
from importlib import metadata

import numpy as np
import pytest

from device_agent.contract.enums import DeviceStatus
from device_agent.contract.errors import NotReady
from device_agent.contract.manifest import Manifest
from device_agent.contract.protocol import StateMessage, TelemetryMessage, decode, encode
from device_agent.contract.runtimes import RuntimeCheck, RuntimeMismatchPolicy, RuntimeStatus
from device_agent.runtime.compat import RuntimePolicy, check_runtime, release
from device_agent.runtime.model import load_model
from device_agent.serve.agent import Agent
from tests.agent.agent_helpers import wait_until
from tests.agent.test_cli import AGENT, get, start, stop, write_config

ORT = metadata.version("onnxruntime")
MAJOR, MINOR = release(ORT)
WARN, REFUSE = RuntimeMismatchPolicy.WARN, RuntimeMismatchPolicy.REFUSE


def validated_with(model_dir, version):
    """Rewrite the manifest as if edgekit had validated the model with onnxruntime ``version``."""
    path = model_dir / "edgekit.json"
    doc = json.loads(path.read_text())
    doc.setdefault("tools", {})["onnxruntime"] = version
    path.write_text(json.dumps(doc))
    return model_dir


def far_version(minors=3):
    return f"{MAJOR}.{MINOR - minors if MINOR >= minors else MINOR + minors}.0"


def manifest_with(tools):
    return Manifest.from_dict({"schema": "edgekit.manifest", "schema_version": 1, "name": "m", "version": "1", "created_at": "now",
                               "signature": {"inputs": [], "outputs": []}, "artifacts": [], "tools": tools})


@pytest.mark.parametrize(
    "installed, validated, policy, status, words",
    [
        ("1.27.0", "1.27.0", RuntimePolicy(), RuntimeStatus.MATCH, "validated with 1.27.0"),
        ("1.27.3", "1.27.0", RuntimePolicy(REFUSE), RuntimeStatus.MATCH, "validated with 1.27.0"),  # patch releases never count
        ("1.27.0", "1.28.1", RuntimePolicy(REFUSE, 1), RuntimeStatus.DRIFT, "1 minor release(s) apart), within [model] runtime_max_minor_drift = 1"),
        ("1.27.0", "1.32.0", RuntimePolicy(WARN), RuntimeStatus.MISMATCH, "5 minor release(s) apart), beyond [model] runtime_max_minor_drift = 0"),
        ("1.27.0", "1.32.0", RuntimePolicy(REFUSE, 4), RuntimeStatus.REFUSED, "deploy a model validated with onnxruntime 1.27"),
        ("2.0.0", "1.32.0", RuntimePolicy(REFUSE, 1000), RuntimeStatus.REFUSED, "major release 2 here, 1 there"),
        ("1.27.0", None, RuntimePolicy(REFUSE), RuntimeStatus.UNKNOWN, "the manifest records no onnxruntime version"),
        ("1.27.0", "nightly", RuntimePolicy(REFUSE), RuntimeStatus.UNKNOWN, "the manifest records onnxruntime nightly"),
        (None, "1.27.0", RuntimePolicy(REFUSE), RuntimeStatus.UNKNOWN, "onnxruntime (version unknown) runs here"),
    ],
)
def test_check_compares_major_and_minor_releases_under_the_policy(installed, validated, policy, status, words):
    m = manifest_with({"onnxruntime": validated} if validated else {})
    art = object()  # only its presence matters: a manifest-less (bare) model has none
    check = check_runtime(m, art, runtime="onnxruntime", policy=policy, installed={"onnxruntime": installed} if installed else {})  # type: ignore[arg-type]
    assert (check.status, check.installed, check.validated) == (status, installed, validated)
    assert words in check.detail
    assert check.refused == (status == RuntimeStatus.REFUSED)


def test_litert_artifacts_compare_the_ai_edge_litert_version_and_bare_files_are_unknown():
    m = manifest_with({"onnxruntime": "1.32.0", "ai-edge-litert": "2.3.0"})
    check = check_runtime(m, object(), runtime="litert", installed={"ai-edge-litert": "1.4.0"}, policy=RuntimePolicy(REFUSE))  # type: ignore[arg-type]
    assert (check.package, check.status) == ("ai-edge-litert", RuntimeStatus.REFUSED) and "major release 1 here, 2 there" in check.detail
    bare = check_runtime(None, None, runtime="onnxruntime", installed={"onnxruntime": ORT})
    assert bare.status == RuntimeStatus.UNKNOWN and "bare model file" in bare.detail


def test_the_model_compress_made_here_matches_this_runtime(digits_dir):
    m = load_model(digits_dir)
    assert (m.runtime_check.status, m.runtime_check.installed, m.runtime_check.validated) == (RuntimeStatus.MATCH, ORT, ORT)
    assert Agent(m).model_info()["runtime_check"]["status"] == "match"


def test_a_minor_release_away_runs_the_selftest_even_when_switched_off_and_warns(digits_copy):
    validated_with(digits_copy, far_version())
    m = load_model(digits_copy, selftest=False)  # the default policy: warn
    assert m.runtime_check.status == RuntimeStatus.MISMATCH
    assert m.selftest.vectors > 0 and m.selftest.passed  # the artifact's own tolerances decide
    agent = Agent(m)
    assert agent.ready
    info = agent.model_info()["runtime_check"]
    assert info["status"] == "mismatch" and info["validated"] == far_version() and info["installed"] == ORT
    assert load_model(digits_copy, selftest=False, runtime_policy=RuntimePolicy(max_minor_drift=3)).runtime_check.status == RuntimeStatus.DRIFT


def test_refuse_keeps_a_model_validated_too_far_away_from_serving(digits_copy):
    validated_with(digits_copy, far_version())
    m = load_model(digits_copy, runtime_policy=RuntimePolicy(REFUSE, 2))
    assert m.runtime_check.refused and m.unfit_reason.startswith("runtime mismatch: onnxruntime")
    agent = Agent(m)
    assert not agent.ready and agent.model_info()["runtime_check"]["status"] == "refused"
    with pytest.raises(NotReady, match="runtime mismatch"):
        agent.predict({"x": np.zeros((1, 1, 8, 8), np.float32)})
    # within the allowance the same model serves
    assert Agent(load_model(digits_copy, runtime_policy=RuntimePolicy(REFUSE, 3))).ready


def test_check_and_run_say_so_in_one_line_and_never_become_ready(tmp_path, digits_copy):
    validated_with(digits_copy, far_version())
    config, port = write_config(tmp_path, digits_copy, model={"path": str(digits_copy), "runtime_mismatch": "refuse"})
    r = subprocess.run([*AGENT, "check", "--config", str(config)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "runtime: refused (onnxruntime" in r.stdout and "not ready: runtime mismatch: onnxruntime" in r.stdout
    proc = start(config)
    try:
        wait_until(lambda: get(port, "/readyz")[0] is not None or proc.poll() is not None, 20, what="the agent's HTTP API")
        status, body = get(port, "/readyz")
        assert status == 503 and "runtime mismatch" in json.loads(body)["reason"]
        status, body = get(port, "/v1/model")
        assert json.loads(body)["runtime_check"]["status"] == "refused"
    finally:
        code, err = stop(proc)
    said = [line for line in err.splitlines() if "runtime mismatch" in line]
    assert code == 0 and len(said) == 1 and "NOT READY" in said[0], err


def test_state_and_telemetry_messages_carry_the_agent_runtime_and_check(digits_copy):
    from device_agent.link.reporter import state_message

    validated_with(digits_copy, far_version())
    agent = Agent(load_model(digits_copy))
    state = decode(encode(state_message(agent, DeviceStatus.ONLINE, device="pi-07", group="lab", boot=3)))
    assert isinstance(state, StateMessage)
    assert state.runtime["onnxruntime"] == ORT and state.agent_version
    assert state.runtime_check == agent.model.runtime_check and state.runtime_check.status == RuntimeStatus.MISMATCH
    offline = decode(encode(state_message(agent, DeviceStatus.OFFLINE, "lwt", device="pi-07", group="lab", boot=3)))
    assert offline.runtime_check is None
    check = RuntimeCheck("onnxruntime", "onnxruntime", ORT, "1.20.0", RuntimeStatus.MISMATCH, detail="d")
    tel = TelemetryMessage(device="pi-07", seq=1, boot=1, ts=1.0, model={"name": "m", "version": "1"}, window={"start": 0, "end": 1},
                           requests=0, errors={}, latency_ms=None, features=[], agent_version="0.1.0", runtime={"onnxruntime": ORT},
                           runtime_check=check)
    back = decode(encode(tel))
    assert (back.agent_version, back.runtime, back.runtime_check) == ("0.1.0", {"onnxruntime": ORT}, check)
    old = {k: v for k, v in tel.to_dict().items() if k not in ("agent_version", "runtime", "runtime_check")}
    assert decode(json.dumps(old)).runtime_check is None  # a message from an older agent still parses


def test_a_malformed_runtime_check_is_one_clear_protocol_error():
    from device_agent.contract.errors import ProtocolError

    msg = StateMessage(device="d", status=DeviceStatus.ONLINE, ts=1.0, boot=1, agent_version="0.1.0").to_dict()
    msg["runtime_check"] = {"runtime": "onnxruntime", "status": "so-so"}
    with pytest.raises(ProtocolError, match="runtime_check is malformed .* status \\(match, drift, mismatch, refused, unknown\\)"):
        decode(json.dumps(msg))
