"""What issue 14 found around `edgekit compress`: NaN/Inf data, an output it cannot write, Ctrl-C. Each is one line and
the right exit code, before any work where it can be, and nothing is left behind: no output, no staging directory, no
temporary files (TensorFlow's autograph ones included)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from device_agent.contract.manifest import Manifest, ManifestError
from edgekit.cli.main import cli
from tests.conftest import build_mlp

ROOT = Path(__file__).resolve().parents[2]
#: onnxruntime (1.32) keeps a session id in $TMPDIR/.ses, read back on every import: its state, not a leftover of a run
ORT_SESSION_FILE = ".ses"


def leftovers(tmp: Path) -> list[str]:
    return sorted(p.name for p in tmp.iterdir() if p.name != ORT_SESSION_FILE)


def invoke(*args) -> object:
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture
def model_and_data(tmp_path) -> tuple[Path, Path]:
    onnx.save(build_mlp(seed=0), tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32))
    return tmp_path / "m.onnx", tmp_path / "calib.npz"


@pytest.mark.parametrize(("value", "kind"), [(np.nan, "NaN"), (np.inf, "+Inf"), (-np.inf, "-Inf")])
def test_non_finite_calibration_data_is_one_line_naming_the_input_and_the_first_index(model_and_data, tmp_path, value, kind):
    model, _ = model_and_data
    x = np.random.default_rng(1).standard_normal((64, 16)).astype(np.float32)
    x[3, 5] = value
    x[9, 0] = value
    np.savez(tmp_path / "bad.npz", x=x)
    res = invoke("compress", "--int8", "--data", tmp_path / "bad.npz", "-o", tmp_path / "out", model)
    assert res.exit_code == 1, res.output
    (line,) = [ln for ln in res.output.strip().splitlines() if "error" in ln]  # after the model line, one error line
    assert line == res.output.strip().splitlines()[-1]
    assert line.startswith(f"error: Input 'x': bad.npz holds {kind} at index [3, 5] (sample 3; 2 non-finite value(s) in all)")
    assert "must be finite" in line and "Traceback" not in res.output
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_non_finite_evaluation_data_is_refused_too(model_and_data, tmp_path):
    model, calib = model_and_data
    x = np.zeros((8, 16), np.float32)
    x[7, 15] = np.nan
    np.savez(tmp_path / "eval.npz", x=x)
    res = invoke("compress", "--int8", "--data", calib, "--eval-data", tmp_path / "eval.npz", "-o", tmp_path / "out", model)
    assert res.exit_code == 1 and "Input 'x': eval.npz holds NaN at index [7, 15] (sample 7;" in res.output


def test_the_manifest_is_strict_json_and_says_where_a_non_finite_number_is(model_and_data, tmp_path):
    model, calib = model_and_data
    res = invoke("compress", "--int8", "--data", calib, "--search-time", "5", "--max-drop", "100", "-o", tmp_path / "out", model)
    assert res.exit_code == 0, res.output
    text = (tmp_path / "out" / "edgekit.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"the manifest holds {c}"))  # strict: no NaN/Infinity literals
    doc = json.loads(text)
    doc["metrics"]["m.int8.onnx"]["latency_ratio"] = float("inf")
    with pytest.raises(ManifestError, match=r"metrics\.m\.int8\.onnx\.latency_ratio is not a finite number; NaN and Infinity are not JSON"):
        Manifest.from_dict(doc).to_json()


def unwritable(tmp_path: Path) -> Path:
    """A directory this process cannot create entries in: read-only for a user, sysfs for root (root ignores modes)."""
    if os.geteuid() == 0:
        return Path("/sys")
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    return d


def test_an_unwritable_output_directory_is_one_line_naming_it_and_the_fix(model_and_data, tmp_path):
    model, calib = model_and_data
    where = unwritable(tmp_path)
    res = invoke("compress", "--int8", "--data", calib, "-o", where / "out", model)
    assert res.exit_code == 1, res.output
    (line,) = res.output.strip().splitlines()
    assert line.startswith(f"error: cannot write the output directory {where / 'out'}: {where} is not writable (")
    assert line.endswith(f"pass -o a directory you can write, or fix the permissions of {where}")
    assert "internal error" not in res.output and "please report it" not in res.output


def _ctrl_c_as_a_terminal_has_it() -> None:
    # a job started in the background by a non-interactive shell (a CI runner's) inherits SIGINT ignored
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _compress(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    """A real `edgekit compress` in its own session (a terminal's Ctrl-C reaches its whole process group) and own TMPDIR."""
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp)}
    proc = subprocess.Popen([sys.executable, "-m", "edgekit.cli", "compress", *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=_ctrl_c_as_a_terminal_has_it)
    return proc, tmp


def _ctrl_c(proc: subprocess.Popen, ready, timeout: float = 120.0) -> tuple[str, str]:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"compress ended before the interrupt: {proc.communicate()}"
        assert time.monotonic() < deadline, "compress never reached the point to interrupt"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    return proc.communicate(timeout=60)


def test_ctrl_c_in_any_command_is_exit_130_and_one_line(monkeypatch, tmp_path):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("edgekit.signing.generate_keys", interrupted)
    res = CliRunner().invoke(cli, ["keys", "generate", "-o", str(tmp_path / "k")])
    assert res.exit_code == 130 and res.output.strip() == "interrupted (Ctrl-C): edgekit keys stopped"  # not "Aborted!", exit 1


@pytest.mark.slow
def test_ctrl_c_during_compress_exits_130_and_leaves_nothing(tmp_path):
    onnx.save(build_mlp(64, 1024, 10, seed=0), tmp_path / "big.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((512, 64)).astype(np.float32))
    proc, tmp = _compress(tmp_path, "--int8", "--data", "calib.npz", "--search-time", "60", "-o", "out", "big.onnx")
    out, err = _ctrl_c(proc, lambda: any(tmp_path.glob(".out.tmp-*")) and time.sleep(0.5) is None)  # the run is under way (seconds from its end)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == ("error: compress interrupted (Ctrl-C): no output was written and its temporary files were "
                                            "removed")
    assert "Aborted!" not in err and "Traceback" not in err and err.count("interrupted") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "calib.npz", "tmpdir"]  # no output, no staging directory
    assert leftovers(tmp) == []  # the run's work directory is gone


def test_the_ort_conversion_works_inside_the_runs_work_directory(tmp_path, monkeypatch):
    """The int8 search converts every candidate to .ort: its temporary directory lives in the run's work directory, which a
    Ctrl-C run removes whole, so an interrupt that lands while that directory is made or removed leaves nothing in $TMPDIR."""
    import types

    import edgekit.ort_tools as ort_tools
    from edgekit.export.ort_mobile import convert_to_ort

    seen: list[Path] = []

    def convert(src: Path, output_dir: Path, **kw) -> None:  # stands in for onnxruntime's converter
        seen.append(src.parent)
        output_dir.mkdir()
        (output_dir / f"{src.stem}.ort").write_bytes(b"ort")

    monkeypatch.setattr(ort_tools, "ort_tool", lambda name: types.SimpleNamespace(OptimizationStyle=types.SimpleNamespace(Fixed=0),
                                                                                   convert_onnx_models_to_ort=convert))
    onnx.save(build_mlp(seed=0), tmp_path / "m.onnx")
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    assert convert_to_ort(tmp_path / "m.onnx", out, "m", scratch=work) == (out / "m.ort", None)
    (where,) = seen
    assert where.parent == work and where.name.startswith("edgekit.ort.")
    assert list(work.iterdir()) == []  # and removed after


@pytest.mark.slow
def test_ctrl_c_while_tensorflow_converts_leaves_no_autograph_files(tmp_path):
    if importlib.util.find_spec("onnx2tf") is None:  # not importorskip: importing it loads TensorFlow into this process, and
        pytest.skip("the tflite extra installs onnx2tf")  # torch's triton, imported later by another test, then segfaults
    onnx.save(build_mlp(seed=0), tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32))
    proc, tmp = _compress(tmp_path, "--int8", "--data", "calib.npz", "--search-time", "5", "--format", "onnx,tflite", "-o", "out", "m.onnx")

    def tensorflow_working() -> bool:  # the TF child's autograph has generated code into (its) TMPDIR
        try:
            return any(tmp.rglob("__autograph_generated_file*"))
        except FileNotFoundError:  # a directory went while it was walked (onnxruntime's quantizer removes its own)
            return False

    out, err = _ctrl_c(proc, tensorflow_working, timeout=300)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("error: compress interrupted (Ctrl-C): no output was written")
    assert "Aborted!" not in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.npz", "m.onnx", "tmpdir"]
    assert leftovers(tmp) == []  # the child's TMPDIR (autograph's __autograph_generated_file*.py) went with it
