"""`--ort-target`: the .ort is built for the CPU it will run on, the manifest says which, the agent skips one it cannot run."""

from __future__ import annotations

import json
import platform

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from device_agent.contract.errors import ModelError
from device_agent.contract.manifest import load_manifest
from device_agent.runtime import model as agent_model
from edgekit.cli.main import cli


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def both_targets(digits, tmp_path_factory):
    """The digits CNN converted (fp32) twice: the default ARM .ort and an amd64 one."""
    outs = {}
    for target in ("arm", "amd64"):
        out = tmp_path_factory.mktemp(f"ort-{target}") / "out"
        args = ["compress", "--format", "onnx,ort", "-o", str(out), str(digits["model"])]
        res = run(*args, *(["--ort-target", target] if target != "arm" else []))
        assert res.exit_code == 0, res.output
        outs[target] = out
    return outs


def test_the_manifest_records_each_ort_target_and_the_operator_config_shows_the_difference(both_targets):
    for target, out in both_targets.items():
        m = load_manifest(out, verify_files=True)
        ort_art = next(a for a in m.artifacts if a.format == "ort")
        assert ort_art.extra["ort_target"] == target
        config = (out / ort_art.extra["required_operators"]).read_text()
        # the x86-only blocked-layout kernels are in the amd64 .ort and only there (a reduced ARM build has none)
        assert ("com.microsoft.nchwc" in config) == (target == "amd64"), config


def test_both_targets_load_in_a_plain_session_here_and_agree_with_the_onnx(both_targets, digits):
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the amd64 .ort runs only on x86-64; this machine is " + platform.machine())
    x = np.load(digits["eval"])
    feeds = {k: x[k][:8] for k in x.files if k != "labels"}
    outs = {}
    for target, out in both_targets.items():
        (path,) = out.glob("*.ort")
        outs[target] = ort.InferenceSession(str(path)).run(None, feeds)[0]
    np.testing.assert_allclose(outs["amd64"], outs["arm"], rtol=1e-4, atol=1e-4)


def test_ort_target_without_an_ort_is_a_usage_error_naming_the_fix(digits, tmp_path):
    res = CliRunner().invoke(cli, ["compress", "--format", "onnx", "--ort-target", "amd64", "-o", str(tmp_path / "o"), str(digits["model"])])
    assert res.exit_code == 2
    assert "--ort-target applies to the .ort artifact; add ort to --format" in res.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("machine", ["aarch64", "armv7l"])
def test_the_agent_skips_an_amd64_ort_on_another_cpu_and_serves_the_onnx(both_targets, monkeypatch, machine):
    out = both_targets["amd64"]
    m = load_manifest(out)
    monkeypatch.setattr(agent_model.platform, "machine", lambda: machine)
    assert agent_model.select_artifact(m, out).format == "onnx"
    with pytest.raises(ModelError, match=rf"built with --ort-target amd64: .*this CPU is {machine}; rebuild with --ort-target arm"):
        agent_model.select_artifact(m, out, prefer=("ort",))
    # the default ARM build is served on any CPU
    arm = both_targets["arm"]
    assert agent_model.select_artifact(load_manifest(arm), arm).format == "ort"


def test_on_x86_64_the_agent_serves_the_amd64_ort(both_targets, monkeypatch):
    out = both_targets["amd64"]
    monkeypatch.setattr(agent_model.platform, "machine", lambda: "x86_64")
    assert agent_model.select_artifact(load_manifest(out), out).format == "ort"


def test_an_older_manifest_without_ort_target_is_an_arm_ort(both_targets, tmp_path):
    """Manifests written before --ort-target have no ``ort_target``: their .ort was built for ARM and loads everywhere."""
    src = both_targets["arm"]
    doc = json.loads((src / "edgekit.json").read_text())
    for a in doc["artifacts"]:
        a["extra"].pop("ort_target", None)
    from device_agent.contract.manifest import Manifest

    m = Manifest.from_dict(doc)
    assert agent_model.select_artifact(m, src).format == "ort"


def test_an_amd64_conversion_prints_nothing_from_onnxruntimes_logger(digits, tmp_path, capfd):
    """ORT's C++ logger warns that an NCHWc graph is hardware specific: with --ort-target amd64 that is what was asked."""
    from edgekit.choices import OrtTarget
    from edgekit.export.ort_mobile import convert_to_ort

    path, config = convert_to_ort(digits["model"], tmp_path, "m", scratch=tmp_path, target=OrtTarget.AMD64)
    assert path.is_file() and config is not None and "com.microsoft.nchwc" in config.read_text()
    out, err = capfd.readouterr()
    assert "Serializing optimized model" not in out + err, err
