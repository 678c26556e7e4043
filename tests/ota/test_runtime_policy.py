"""An update validated on a runtime too far from this device's is refused before its promotion (issue 19):
the served model stays, and the job says why; under "warn" it is promoted and the mismatch reported."""

import pytest

from device_agent.contract.enums import JobState
from device_agent.contract.runtimes import RuntimeMismatchPolicy, RuntimeStatus
from device_agent.runtime.compat import RuntimePolicy
from device_agent.runtime.model import load_model
from tests.agent.test_runtime_check import far_version, validated_with


def _far_release(releases, tmp_path, keys):
    """v2 of the OTA releases, validated with an onnxruntime several minor releases away, signed again."""
    import shutil

    from edgekit.signing import sign_dir

    d = tmp_path / "far"
    shutil.copytree(releases["v2"], d)
    (d / "edgekit.json.sig").unlink()
    validated_with(d, far_version())
    sign_dir(d, keys["good"].private)
    return d


@pytest.mark.parametrize("policy, state, reason", [(RuntimePolicy(RuntimeMismatchPolicy.REFUSE), JobState.REJECTED, "runtime_mismatch"),
                                                   (RuntimePolicy(RuntimeMismatchPolicy.WARN), JobState.SUCCEEDED, "")])
def test_an_update_validated_on_a_runtime_too_far_away_is_refused_before_promotion(device, releases, tmp_path, keys, policy, state,
                                                                                   reason):
    dev = device()
    dev.updater.runner.loader = lambda p: load_model(p, threads=1, runtime_policy=policy)
    dev.deploy(_far_release(releases, tmp_path, keys), "j1")
    r = dev.wait_final("j1")
    assert r.state == state and (r.reason == reason or not reason), r
    if state == JobState.REJECTED:
        assert "validated with another runtime: onnxruntime" in r.detail
        assert dev.version == "1.0.0"  # the old model keeps serving
    else:
        assert dev.version == "1.1.0" and dev.serving.get().runtime_check.status == RuntimeStatus.MISMATCH
