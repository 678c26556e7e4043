"""Ctrl-C during training: the best checkpoint is kept as a runnable ONNX file, and the CLI says where (exit 130)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from edgekit.cli.main import cli
from edgekit.onnx_model import io_specs

torch = pytest.importorskip("torch")
pytest.importorskip("onnx2torch")


def test_ctrl_c_in_distill_keeps_the_best_student_and_says_where(digits, monkeypatch, tmp_path):
    import edgekit.torchbench.trainer as trainer

    real = trainer._outputs
    calls = {"train": 0}

    def interrupted_in_epoch_2(net, args):
        if torch.is_grad_enabled():  # a training batch (validation runs under no_grad)
            calls["train"] += 1
            if calls["train"] == 25:  # 18 batches an epoch: this is epoch 2
                raise KeyboardInterrupt
        return real(net, args)

    monkeypatch.setattr(trainer, "_outputs", interrupted_in_epoch_2)
    out = tmp_path / "o"
    res = CliRunner().invoke(cli, ["distill", "--teacher", str(digits["model"]), "--data", str(digits["train"]), "--epochs", "5",
                                   "-o", str(out)])
    ckpt = digits["model"].parent / "digits.distill.ckpt"
    try:
        assert res.exit_code == 130, res.output
        line = res.output.strip().splitlines()[-1]
        assert line.startswith("error: distill interrupted at epoch 2/5; the best checkpoint (epoch 1, val acc ")
        assert line.endswith(f"is kept at {ckpt / 'best.onnx'} (weights also in {ckpt / 'best.pt'})")
        assert not out.exists()  # nothing half-written
        best = onnx.load(str(ckpt / "best.onnx"))
        assert io_specs(best) == io_specs(onnx.load(str(digits["model"])))  # ready for `edgekit compress`
        z = np.load(digits["eval"])
        s = ort.InferenceSession(str(ckpt / "best.onnx"), providers=["CPUExecutionProvider"])
        assert (s.run(None, {"x": z["x"]})[0].argmax(1) == z["labels"]).mean() > 0.5  # epoch 1 already learned
    finally:
        import shutil

        shutil.rmtree(ckpt, ignore_errors=True)


def test_checkpoints_of_a_converted_model_are_kept_in_the_working_directory(tmp_path, monkeypatch):
    from edgekit.distill.config import DistillConfig
    from edgekit.torchbench.workbench import checkpoint_dir

    monkeypatch.chdir(tmp_path)
    converted = tmp_path / "edgekit.import.abc123" / "build.onnx"  # the importer's temp dir
    assert checkpoint_dir(converted, DistillConfig(), "distill") == tmp_path / "build.distill.ckpt"
    (tmp_path / "models").mkdir()
    given = tmp_path / "models" / "net.onnx"
    assert checkpoint_dir(given, DistillConfig(), "prune") == tmp_path / "models" / "net.prune.ckpt"
    assert checkpoint_dir(given, DistillConfig(checkpoint_dir=str(tmp_path / "ck")), "prune") == tmp_path / "ck"
