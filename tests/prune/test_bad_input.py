"""Bad input to pruning: one clean line that names the problem and the fix."""

from __future__ import annotations

import textwrap

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from device_agent.contract.manifest import load_manifest
from edgekit.cli.main import cli
from tests.conftest import build_mlp

torch = pytest.importorskip("torch")
pytest.importorskip("onnx2torch")

NET = """
import torch


class ShrinkNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 16, 3, padding=1)
        self.act = torch.nn.Softshrink(0.1)  # exported as ONNX Shrink, which onnx2torch cannot convert
        self.conv2 = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(self.pool(torch.relu(self.conv2(self.act(self.conv(x))))).flatten(1))


def trained():
    net = ShrinkNet()
    net.load_state_dict(torch.load(__file__.replace("nets.py", "shrink.pt")))
    return net.eval()
"""


def _as_onnx(net) -> onnx.ModelProto:
    w = {k: numpy_helper.from_array(v.detach().numpy(), k) for k, v in net.state_dict().items()}
    nodes = [
        helper.make_node("Conv", ["x", "conv.weight", "conv.bias"], ["c1"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Shrink", ["c1"], ["s1"], name="shrink", lambd=0.1, bias=0.1),
        helper.make_node("Conv", ["s1", "conv2.weight", "conv2.bias"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["y"], name="fc", transB=1),
    ]
    g = helper.make_graph(nodes, "shrink", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], initializer=list(w.values()))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.fixture
def shrink_model(tmp_path):
    (tmp_path / "nets.py").write_text(textwrap.dedent(NET))
    import importlib.util

    spec = importlib.util.spec_from_file_location("nets_under_test", tmp_path / "nets.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    net = mod.ShrinkNet().eval()
    torch.save(net.state_dict(), tmp_path / "shrink.pt")
    p = tmp_path / "shrink.onnx"
    onnx.save(_as_onnx(net), p)  # built by hand: torch's exporter decomposes Softshrink
    assert "Shrink" in {n.op_type for n in onnx.load(str(p)).graph.node}
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).standard_normal((48, 1, 8, 8)).astype(np.float32))
    return p


def test_unconvertible_op_is_named_in_one_line_with_the_fix(shrink_model, tmp_path):
    res = run("compress", "--prune", "0.5", "--structured", "-o", str(tmp_path / "o"), str(shrink_model))
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("model: ")  # the model line, then exactly one error line
    assert lines[1].startswith("error: structured pruning needs the model in PyTorch, and onnx2torch cannot convert op Shrink (node ")
    assert "pass the PyTorch model instead" in lines[1]
    assert "Traceback" not in res.output and not (tmp_path / "o").exists()


def test_the_pytorch_model_is_used_when_onnx2torch_cannot_convert(shrink_model, tmp_path):
    res = run("compress", "--prune", "0.5", "--structured", "--torch-model", f"{tmp_path / 'nets.py'}:trained", "--epochs", "1",
              "--data", str(tmp_path / "d.npz"), "--format", "onnx", "-o", str(tmp_path / "o"), str(shrink_model))
    assert res.exit_code == 0, res.output
    out = onnx.load(str(tmp_path / "o" / "shrink.pruned.onnx"))
    convs = [i for i in out.graph.initializer if len(i.dims) == 4]
    assert sorted(i.dims[0] for i in convs) == [8, 8]


def test_a_torch_model_that_differs_from_the_onnx_file_is_refused(shrink_model, tmp_path):
    (tmp_path / "other.py").write_text("from nets import ShrinkNet\n\ndef fresh():\n    return ShrinkNet()\n")
    res = run("compress", "--prune", "0.5", "--structured", "--torch-model", f"{tmp_path / 'other.py'}:fresh",
              "-o", str(tmp_path / "o"), str(shrink_model))
    assert res.exit_code == 1
    assert "does not compute what shrink.onnx computes" in res.output


@pytest.mark.parametrize("args, message", [
    (["--structured"], "--structured need(s) --prune RATIO"),
    (["--prune", "1.5"], "--prune"),
    (["--prune", "0.5", "--sensitivity"], "--sensitivity apply to --structured pruning only"),
    (["--prune", "0.5", "--prune-layer", "fc1"], "'fc1' is not NAME=RATIO"),
])
def test_usage_errors_exit_2(mlp_model, args, message):
    res = run("compress", *args, str(mlp_model))
    assert res.exit_code == 2
    assert message in res.output


def test_prune_alone_is_a_valid_command(mlp_model):
    res = run("compress", "--prune", "0.5", "--format", "onnx", str(mlp_model))
    assert res.exit_code == 0, res.output
    assert (mlp_model.parent / "mlp.pruned" / "mlp.pruned.onnx").is_file()


def test_nothing_to_do_mentions_prune(mlp_model):
    res = run("compress", str(mlp_model))
    assert res.exit_code == 2 and "nothing to do: pass --int8, --fp16, --prune RATIO" in res.output


def test_training_without_data_says_to_pass_data(tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(build_mlp(), p)
    res = run("compress", "--prune", "0.5", "--structured", "--epochs", "3", "-o", str(tmp_path / "o"), str(p))
    assert res.exit_code == 1
    assert "prune: training for 3 epoch(s) needs data: pass --data train.npz" in res.output


def test_an_int8_model_is_not_pruned(digits, tmp_path):
    out = tmp_path / "q"
    # objective size: an int8 file whatever this CPU times (balanced may keep a float model that is faster here)
    assert run("compress", "--int8", "--objective", "size", "--format", "onnx", "-o", str(out), str(digits["model"])).exit_code == 0
    assert load_manifest(out).artifact("digits.int8.onnx").precision in ("int8", "mixed")
    res = run("compress", "--prune", "0.5", "-o", str(tmp_path / "o"), str(out / "digits.int8.onnx"))
    assert res.exit_code == 1
    assert "prune the float model, then quantize (--prune ... --int8)" in res.output


def test_unlabelled_data_without_a_teacher_says_which_is_needed(digits, tmp_path):
    from edgekit.compress import CompressOptions, compress
    from edgekit.errors import InputError
    from edgekit.pipeline import StepSpec

    np.savez(tmp_path / "unlabelled.npz", x=np.load(digits["train"])["x"][:200])
    with pytest.raises(InputError, match="training needs a teacher or labels: the data has no 'labels' array and there is no teacher"):
        compress(digits["model"], tmp_path / "unlabelled.npz",
                 CompressOptions(steps=[StepSpec("prune", {"ratio": 0.5, "method": "structured", "epochs": 2, "distill": False})],
                                 formats=("onnx",), output=tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_unstructured_fine_tuning_of_an_unconvertible_model_offers_epochs_0(shrink_model, tmp_path):
    res = run("compress", "--prune", "0.5", "--epochs", "2", "--data", str(tmp_path / "d.npz"), "-o", str(tmp_path / "o"), str(shrink_model))
    assert res.exit_code == 1
    assert "onnx2torch cannot convert op Shrink (node 'shrink')" in res.output
    assert "or pass --epochs 0 to prune without fine-tuning (no torch needed)" in res.output
    assert run("compress", "--prune", "0.5", "--epochs", "0", "--format", "onnx", "-o", str(tmp_path / "o"), str(shrink_model)).exit_code == 0


def test_without_the_torch_extra_structured_pruning_says_how_to_get_it(mlp_model):
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None\n"
            "from edgekit.cli.main import main\n"
            f"main(['compress', '--prune', '0.5', '--structured', {str(mlp_model)!r}])\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == "error: structured pruning needs the torch extra: pip install 'edgekit[torch]'"
