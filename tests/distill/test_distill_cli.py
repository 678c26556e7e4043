"""`edgekit distill`: a thinner student trained from the teacher, exported and reported like any compressed model."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from device_agent.contract.manifest import load_manifest
from edgekit.cli.main import cli
from edgekit.onnx_model import io_specs

pytest.importorskip("torch")
pytest.importorskip("onnx2torch")

NETS = """
import torch


def small_net():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))


def seven_classes():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 7))


def not_a_module():
    return 42


def teacher():
    from edgekit.examples.digits import DigitsNet

    net = DigitsNet()
    net.load_state_dict(torch.load(__file__.replace("nets.py", "digits.pt")))
    return net.eval()
"""


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.fixture
def nets(tmp_path):
    p = tmp_path / "nets.py"
    p.write_text(textwrap.dedent(NETS))
    return p


@pytest.fixture
def unlabelled(digits, tmp_path):
    p = tmp_path / "unlabelled.npz"
    np.savez(p, x=np.load(digits["train"])["x"])
    return p


@pytest.fixture(scope="module")
def auto_student(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("distill") / "out"
    res = run("distill", "--teacher", str(digits["model"]), "--student", "auto:0.5", "--data", str(digits["train"]),
              "--epochs", "8", "--int8", "--objective", "size", "--max-drop", "3", "--format", "onnx", "-o", str(out))
    assert res.exit_code == 0, res.output
    return out, res.output


def test_auto_student_is_thinner_and_goes_through_int8_manifest_and_report(auto_student, digits):
    out, output = auto_student
    files = {p.name for p in out.iterdir()}
    assert {"digits.student.int8.onnx", "edgekit.json", "report.json"} <= files and not files & {"digits.student.onnx", "digits.onnx"}
    m = load_manifest(out, verify_files=True)
    assert [s["name"] for s in m.raw["steps"]] == ["distill", "int8"]
    # --objective size reaches the int8 step: the student ships in int8 even where int8 is not faster on this CPU
    assert m.raw["steps"][1]["result"]["search"]["objective"] == "size"
    assert m.artifact("digits.student.int8.onnx").precision in ("int8", "mixed")
    rec = m.raw["steps"][0]["result"]
    assert rec["kind"] == "auto" and rec["width"] == 0.5
    assert rec["params"]["ratio"] < 0.3
    assert rec["out_channels"]["/features/features.3/Conv"] == {"before": 32, "after": 16}
    assert rec["hard_labels"] is True and rec["fine_tune"]["metric"] == "val_accuracy"
    # the report compares the student with the teacher (the run's source)
    report = json.loads((out / "report.json").read_text())
    assert report["baseline"]["file"] == "digits.onnx"
    assert report["rows"][0]["size_ratio"] < 0.15
    assert m.metrics["source"]["accuracy"] - m.metrics["digits.student.int8.onnx"]["accuracy"] <= 3
    assert "distill: student auto:0.5: params 40,394 → 10,346 (0.26×), file 164,034 → " in output and "digits.student.int8.onnx" in output
    assert io_specs(onnx.load(str(out / "digits.student.int8.onnx"))) == io_specs(onnx.load(str(digits["model"])))
    assert not (digits["model"].parent / "digits.distill.ckpt").exists()  # checkpoints are removed once training finished


def test_factory_student_learns_from_unlabelled_data(digits, nets, unlabelled, tmp_path):
    out = tmp_path / "o"
    res = run("distill", "--teacher", str(digits["model"]), "--student", f"{nets}:small_net", "--data", str(unlabelled),
              "--epochs", "6", "--lr", "0.01", "--format", "onnx", "-o", str(out), "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    rec = report["steps"][0]["result"]
    assert rec["kind"] == "factory" and rec["hard_labels"] is False
    assert rec["fine_tune"]["metric"] == "val_agreement"  # no labels: agreement with the teacher picks the best epoch
    assert rec["fine_tune"]["best"] > 80
    model = onnx.load(str(out / "digits.student.onnx"))
    assert sum(numpy_helper.to_array(i).size for i in model.graph.initializer) == 64 * 32 + 32 + 32 * 10 + 10
    assert report["rows"][0]["agreement"] > 80


def test_pytorch_teacher_is_exported_then_distilled(digits, nets, tmp_path):
    import shutil

    shutil.copy(digits["weights"], tmp_path / "digits.pt")
    out = tmp_path / "out" / "student"
    res = run("distill", "--teacher", f"{nets}:teacher", "--student", f"{nets}:small_net", "--data", str(digits["train"]),
              "--epochs", "3", "--lr", "0.01", "--format", "onnx", "-o", str(out))
    assert res.exit_code == 0, res.output
    exported = tmp_path / "out" / "teacher.teacher.onnx"
    assert f"exported the PyTorch teacher {nets}:teacher to {exported}" in res.output
    m = load_manifest(out)
    assert m.raw["source"]["file"] == "teacher.teacher.onnx"  # the manifest's source is the exported teacher, by hash
    assert m.metrics["source"]["accuracy"] > 95  # the exported teacher is the trained digits CNN
    assert io_specs(onnx.load(str(out / "teacher.teacher.student.onnx")))[0][0].name == "x"  # named after the data's array
    res = run("distill", "--teacher", f"{nets}:teacher", "--data", str(digits["train"]), "-o", str(out))
    assert res.exit_code == 1 and "teacher.teacher.onnx exists; the PyTorch teacher is exported there: pass --force" in res.output


def test_same_seed_gives_the_same_student(digits, tmp_path):
    def weights(seed: int, name: str):
        out = tmp_path / name
        res = run("distill", "--teacher", str(digits["model"]), "--data", str(digits["train"]), "--epochs", "2", "--seed", str(seed),
                  "--format", "onnx", "-o", str(out))
        assert res.exit_code == 0, res.output
        return [numpy_helper.to_array(i) for i in onnx.load(str(out / "digits.student.onnx")).graph.initializer]

    a, b, c = weights(7, "a"), weights(7, "b"), weights(8, "c")
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_student_output_shape_mismatch_fails_before_training(digits, nets, tmp_path):
    res = run("distill", "--teacher", str(digits["model"]), "--student", f"{nets}:seven_classes", "--data", str(digits["train"]),
              "-o", str(tmp_path / "o"))
    assert res.exit_code == 1
    assert (f"error: student '{nets}:seven_classes' outputs [N, 7], the teacher outputs [N, 10] (logits); the student's outputs "
            "must have the teacher's shapes") in res.output
    assert "epoch" not in res.output  # nothing was trained
    assert not (digits["model"].parent / "digits.distill.ckpt").exists() and not (tmp_path / "o").exists()


@pytest.mark.parametrize("student, message", [
    ("auto:1.5", "student 'auto:1.5': give auto:W with a width factor 0 < W < 1"),
    ("auto", "give auto:W with a width factor"),
    ("small_net", "--student 'small_net' is not module:function"),
    ("{nets}:missing", "has no function 'missing'; it has not_a_module, seven_classes, small_net"),
    ("{nets}:not_a_module", "returned int; the factory must return a torch.nn.Module"),
    ("no_such_module_xyz:fn", "cannot import module 'no_such_module_xyz'"),
])
def test_bad_student_specs(digits, nets, tmp_path, student, message):
    res = run("distill", "--teacher", str(digits["model"]), "--student", student.format(nets=nets), "--data", str(digits["train"]),
              "-o", str(tmp_path / "o"))
    assert res.exit_code == 1, res.output
    assert message in res.output
    assert len(res.output.strip().splitlines()) <= 2


def test_distill_needs_teacher_and_data(digits):
    assert run("distill", "--data", str(digits["train"])).exit_code == 2
    res = run("distill", "--teacher", str(digits["model"]))
    assert res.exit_code == 2 and "--data" in res.output


def test_help_and_step_configs_do_not_import_torch():
    import subprocess
    import sys

    code = ("import sys; from edgekit.cli.main import main; sys.argv=['edgekit','--help']\ntry: main()\nexcept SystemExit: pass\n"
            "from edgekit.pipeline import StepSpec, validate_step\n"
            "validate_step(StepSpec('prune', {'ratio': 0.5, 'method': 'structured', 'layers': {'conv*': 0.3}}))\n"
            "validate_step(StepSpec('distill', {'student': 'auto:0.25', 'epochs': 3}))\n"
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "distill" in done.stdout and done.stdout.strip().endswith("False")
