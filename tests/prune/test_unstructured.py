"""Unstructured magnitude pruning: exact sparsity, honest sizes (raw unchanged, gzip smaller), zeros survive fine-tuning and int8."""

from __future__ import annotations

import gzip
import subprocess
import sys

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from device_agent.contract.manifest import load_manifest
from edgekit.cli.main import cli
from edgekit.compress import CompressOptions, compress
from edgekit.pipeline import StepSpec
from edgekit.prune.unstructured import magnitude_masks, prunable_weights
from tests.conftest import build_mlp


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_global_masks_zero_exactly_the_smallest_weights():
    rng = np.random.default_rng(0)
    w = {"a": rng.standard_normal((8, 8)) * 0.1, "b": rng.standard_normal((16, 4))}
    m = magnitude_masks(w, 0.5)
    assert sum((~v).sum() for v in m.values()) == 64  # half of 128
    kept_min = min(np.abs(w[k][m[k]]).min() for k in w)
    dropped_max = max(np.abs(w[k][~m[k]]).max() for k in w)
    assert dropped_max <= kept_min
    assert (~m["a"]).mean() > (~m["b"]).mean()  # global: the layer of small weights loses more


def test_per_layer_masks_and_layer_overrides():
    rng = np.random.default_rng(1)
    w = {"a": rng.standard_normal((10, 10)), "b": rng.standard_normal((10, 10)), "c": np.zeros((4, 4))}  # ties: all zero
    m = magnitude_masks(w, 0.3, per_layer=True, layer_ratios={"b": 0.9})
    assert (~m["a"]).sum() == 30 and (~m["b"]).sum() == 90 and (~m["c"]).sum() == 5  # round(0.3 * 16)


def test_step_without_training_needs_no_torch_and_reports_honestly(tmp_path):
    p = tmp_path / "mlp.onnx"
    onnx.save(build_mlp(hidden=256), p)
    r = compress(p, None, CompressOptions(steps=[StepSpec("prune", {"ratio": 0.8})], formats=("onnx",)))
    rec = r.steps[0]["result"]
    assert rec["method"] == "unstructured"
    assert rec["layers"]["fc1"]["sparsity"] == pytest.approx(0.8, abs=0.001)
    assert rec["layers"]["fc2"]["sparsity"] == 0.0  # the output layer is never pruned
    assert rec["never_pruned"] == ["fc2"]
    size = rec["size"]
    assert abs(size["after"] - size["before"]) < 0.01 * size["before"]  # zeros are still stored
    assert size["gzip_after"] < 0.5 * size["gzip_before"]
    assert "raw size and latency are unchanged" in rec["note"]
    assert r.output == tmp_path / "mlp.pruned"
    out = onnx.load(str(r.output / "mlp.pruned.onnx"))
    w1 = next(numpy_helper.to_array(i) for i in out.graph.initializer if i.name == "w1")
    src = numpy_helper.to_array(next(i for i in build_mlp(hidden=256).graph.initializer if i.name == "w1"))
    assert np.array_equal(w1 != 0, np.abs(src) > np.quantile(np.abs(src), 0.8))  # the largest 20% survive, unchanged
    assert np.array_equal(w1[w1 != 0], src[w1 != 0])


def test_unstructured_pruning_without_training_runs_without_torch(tmp_path):
    p = tmp_path / "mlp.onnx"
    onnx.save(build_mlp(hidden=64), p)
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any torch import now fails
        "from edgekit.compress import CompressOptions, compress; from edgekit.pipeline import StepSpec\n"
        "import numpy as np; np.savez('DATA', x=np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32))\n"
        f"r = compress({str(p)!r}, 'DATA', CompressOptions(steps=[StepSpec('prune', {{'ratio': 0.5}}), StepSpec('int8', {{'max_drop': 100}})],"
        " formats=('onnx',)), say=print)\n"
        "print(r.steps[0]['result']['sparsity'])\n"
    )
    code = code.replace("DATA", str(tmp_path / "d.npz"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "prune: fine-tuning skipped: it needs the torch extra (pip install 'edgekit[torch]')" in done.stdout
    assert float(done.stdout.strip().splitlines()[-1]) == pytest.approx(0.5 * 16 * 64 / (16 * 64 + 64 * 4), abs=0.002)
    assert (tmp_path / "mlp.pruned.int8" / "mlp.pruned.int8.onnx").is_file()


def test_prune_80_then_int8_keeps_the_zeros_and_gzips_small(digits, tmp_path):
    out = tmp_path / "out"
    # objective size: int8 is what this test is about (under balanced, a tiny model whose int8 is not faster here stays float)
    res = run("compress", "--prune", "0.8", "--int8", "--objective", "size", "--epochs", "3", "--data", str(digits["train"]),
              "--format", "onnx", "-o", str(out), str(digits["model"]))
    assert res.exit_code == 0, res.output
    prune_lines = [ln for ln in res.output.splitlines() if ln.startswith("prune:")]
    assert any("Not a speed-up" in ln for ln in prune_lines) and not any("faster" in ln.lower() for ln in prune_lines)
    art = out / "digits.pruned.int8.onnx"
    m = load_manifest(out)
    assert [s["name"] for s in m.raw["steps"]] == ["prune", "int8"]
    rec = m.raw["steps"][0]["result"]
    assert rec["sparsity"] >= 0.78 and rec["fine_tune"]["epochs_run"] >= 1
    q = [numpy_helper.to_array(i) for i in onnx.load(str(art)).graph.initializer if i.data_type == onnx.TensorProto.INT8 and
         np.prod(i.dims) >= 1000]
    assert q and sum((a == 0).sum() for a in q) / sum(a.size for a in q) > 0.75  # int8 zero point 0: zeros stay zeros
    gz = len(gzip.compress(art.read_bytes(), 9))
    assert gz < 0.15 * digits["model"].stat().st_size  # the benchmark holds the 0.1x target; here only a few epochs
    assert m.metrics["source"]["accuracy"] - m.metrics[art.name]["accuracy"] <= 1.5


def test_fine_tuning_keeps_every_pruned_weight_at_zero(digits, tmp_path):
    r = compress(digits["model"], digits["train"], CompressOptions(steps=[StepSpec("prune", {"ratio": 0.7, "epochs": 2, "scope": "layer"})],
                                                              formats=("onnx",), output=tmp_path / "o"))
    rec = r.steps[0]["result"]
    assert rec["fine_tune"]["epochs_run"] == 2
    model = onnx.load(str(tmp_path / "o" / "digits.pruned.onnx"))
    layers = prunable_weights(model)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    out_layer = list(layers)[-1]
    for node, init in layers.items():
        expected = 0.0 if node == out_layer else 0.7
        assert (inits[init] == 0).mean() == pytest.approx(expected, abs=0.002), node


def _matmul_model(rng) -> onnx.ModelProto:
    from onnx import TensorProto, helper

    w1 = (rng.standard_normal((16, 64)) / 4).astype(np.float32)
    w2 = (rng.standard_normal((64, 4)) / 8).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (np.zeros(64, np.float32), "b1"), (w2, "w2"))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"), helper.make_node("Add", ["h", "b1"], ["hb"], name="add1"),
             helper.make_node("Relu", ["hb"], ["hr"], name="relu"), helper.make_node("MatMul", ["hr", "w2"], ["logits"], name="mm2")]
    g = helper.make_graph(nodes, "mm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_matmul_weights_are_fine_tuned_with_their_zeros_kept(tmp_path):
    pytest.importorskip("onnx2torch")
    from edgekit.errors import EdgekitError

    rng = np.random.default_rng(0)
    src = _matmul_model(rng)
    onnx.save(src, tmp_path / "mm.onnx")
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((400, 16)).astype(np.float32))
    compress(tmp_path / "mm.onnx", tmp_path / "d.npz", CompressOptions(steps=[StepSpec("prune", {"ratio": 0.6, "epochs": 3})],
                                                                      formats=("onnx",), output=tmp_path / "o"))
    w = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "o" / "mm.pruned.onnx")).graph.initializer}
    assert sorted(w) == ["b1", "w1", "w2"]  # the source's names survive the round trip
    before = numpy_helper.to_array(src.graph.initializer[0])
    kept = w["w1"] != 0
    assert (~kept).mean() == pytest.approx(0.6, abs=0.002)  # zeros stayed zeros through training
    assert not np.allclose(w["w1"][kept], before[kept])  # MatMul weights (onnx2torch buffers) were trained
    with pytest.raises(EdgekitError, match="structured pruning found no channels it can remove"):
        compress(tmp_path / "mm.onnx", None, CompressOptions(steps=[StepSpec("prune", {"ratio": 0.5, "method": "structured", "epochs": 0})],
                                                             formats=("onnx",), output=tmp_path / "s"))
    with pytest.raises(EdgekitError, match="student 'auto:0.5': the teacher has no Conv or Linear"):
        compress(tmp_path / "mm.onnx", tmp_path / "d.npz", CompressOptions(steps=[StepSpec("distill", {"epochs": 1})], formats=("onnx",),
                                                                          output=tmp_path / "d"))
